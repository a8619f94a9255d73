# The Python backend stub PyTriton ships embeds an older CPython 3.11 than
# the standard library it finds here: its C RLock lacks _recursion_count,
# which this stdlib's multiprocessing.resource_tracker calls. The pure
# Python RLock has it.
import threading

try:
    import multiprocessing.resource_tracker as _rt

    if not hasattr(threading.RLock(), "_recursion_count"):
        _rt._resource_tracker._lock = threading._PyRLock()
except Exception:  # only ever a workaround for that stub
    pass
