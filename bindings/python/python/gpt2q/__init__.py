"""gpt2q: a small, fast GPT-2 runtime for Raspberry Pi class boards, from Python.

Load a `.g2q` model file with :class:`Model`, then score texts (:meth:`Model.score`), generate
(:meth:`Model.generate`, optionally streamed), chat (:meth:`Model.chat`) or read the raw logits
(:meth:`Model.logits`, as NumPy). :func:`convert` turns a Hugging Face GPT-2 checkpoint into a
`.g2q` file. Every forward pass releases the GIL; Ctrl-C interrupts a long call.
"""

from ._gpt2q import Chat, Model, ModelError, TextStream, convert

__all__ = ["Chat", "Model", "ModelError", "TextStream", "convert"]
