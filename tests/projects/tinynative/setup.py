from setuptools import Extension, setup

# The C extension is declared here: setuptools reads ext_modules from setup.py, not from pyproject.toml.
setup(ext_modules=[Extension("tinynative._speed", ["src/tinynative/speed.c"])])
