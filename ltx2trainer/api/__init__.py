"""The HTTP gateway (FastAPI). Never imports torch or the pipeline."""

from ltx2trainer.api.app import create_app

__all__ = ["create_app"]
