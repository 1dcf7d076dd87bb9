"""Pixel units inside the library, /255 units where people type: the one conversion between them.

An eps or step size is in pixel units of an image in [0,1] everywhere in pmg_core (1/255 is one
8-bit grey level); the command line, recipes, the app and reports speak in /255 units, where
"eps 4" means 4/255. (An L2 eps typed in /255 units is likewise divided by 255.)
"""
from __future__ import annotations


def from_255(value: float) -> float:
    """A value typed in /255 units -> pixel units."""
    return value / 255


def to_255(value: float, digits: int = 4) -> float:
    """Pixel units -> /255 units, rounded for reports (float error would print 3.9999999)."""
    return round(value * 255, digits)
