-- bench/soak.py's request mix for wrk: SOAK_MIX is a JSON list of {path, accept, gzip, weight}; each
-- request picks one entry with probability proportional to its weight. (Parsed with patterns, not a JSON
-- library: wrk's LuaJIT has none, and the entries are flat strings written by soak.py.)
local entries = {}
local total = 0

for entry in string.gmatch(os.getenv("SOAK_MIX") or "", "{(.-)}") do
  local fields = {}
  for key, value in string.gmatch(entry, '"(%w+)": "(.-)"') do
    fields[key] = value
  end
  local headers = { ["Accept"] = fields.accept }
  if fields.gzip ~= "" then
    headers["Accept-Encoding"] = "gzip"
  end
  local weight = tonumber(fields.weight) or 1
  total = total + weight
  table.insert(entries, { path = fields.path, headers = headers, upto = total })
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  local pick = math.random() * total
  for _, entry in ipairs(entries) do
    if pick <= entry.upto then
      return wrk.format("GET", entry.path, entry.headers)
    end
  end
  return wrk.format("GET", entries[#entries].path, entries[#entries].headers)
end
