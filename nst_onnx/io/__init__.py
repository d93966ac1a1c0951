"""Images and files: loading (formats, orientation, colour, hostile headers), colour
transforms, atomic writes."""
