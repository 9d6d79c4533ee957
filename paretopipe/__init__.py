"""ParetoPipe: split CNN inference across edge devices and find where to cut."""

__version__ = "0.1.0"
