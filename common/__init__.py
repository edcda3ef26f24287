"""The bottom of the import graph: what every package may use and that imports no project package."""
