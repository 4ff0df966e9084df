"""Pure tensor/array functions shared by the stages (no file I/O, no globals).

Import the submodule you need (``from banacli.ops import bap``); this package imports
nothing eagerly so that one op's optional dependency never breaks another.
"""
