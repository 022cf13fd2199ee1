"""mtp: task-specific deep-learning pipelines behind one API.

Importing this package stays light: torch and every domain dependency load only when used.
"""
__version__ = "0.1.0"
__all__ = ["Pipeline", "__version__"]


def __getattr__(name):
    if name == "Pipeline":
        from mtp.pipeline import Pipeline
        return Pipeline
    raise AttributeError(f"module 'mtp' has no attribute {name!r}")
