"""`shine demo`: a Gradio app to internalize a document and compare SHINE's answers with in-context ones.

    from shine_hf.demo import build_demo, load_demo_model
    model, content = load_demo_model()          # the shipped toy models; or load_demo_model("org/ckpt")
    build_demo(model, content).launch()

Needs the `demo` extra (`pip install "shine-hf[demo]"`). Guide: docs/demo.md.
"""

from .app import ServerStartError, build_demo, launch, serve
from .callbacks import DemoCallbacks, InternalizedDocument, write_adapter_zip
from .content import DemoContent, load_demo_model, toy_facts_content

__all__ = [
    "DemoCallbacks",
    "DemoContent",
    "InternalizedDocument",
    "ServerStartError",
    "build_demo",
    "launch",
    "load_demo_model",
    "serve",
    "toy_facts_content",
    "write_adapter_zip",
]
