"""TeViA in the browser: the Slicer module's workflow as a web page on trame-slicer.

A third front end beside the Qt widget and the command line: it runs the module's own Logic
(TeViASegmentLib) over trame-slicer's scene; the model runs in the Logic's warm worker process.
It imports trame and TeViASegmentLib, never torch.
"""

__all__: list[str] = []
