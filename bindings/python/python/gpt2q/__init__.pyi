from os import PathLike
from typing import Any, Dict, Literal, Iterator, List, Optional, Sequence, TypedDict, Union, overload

import numpy

class ModelError(Exception):
    """A model file is damaged, truncated or unsupported, or its weights produce non-finite values."""

class Score(TypedDict):
    text: str
    tokens: List[int]
    logprobs: List[float]
    sum_logprob: float
    perplexity: Optional[float]

class TextStream(Iterator[str]):
    """Generated text in pieces of whole UTF-8 characters; leaving the loop stops the generation."""
    def __iter__(self) -> "TextStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...

class Chat:
    """A conversation keeping the KV cache between turns; made by Model.chat()."""
    @overload
    def send(self, text: str, stream: Literal[False] = ...) -> str: ...
    @overload
    def send(self, text: str, stream: Literal[True]) -> TextStream: ...
    def send(self, text: str, stream: bool = False) -> Union[str, TextStream]: ...

class Model:
    """A GPT-2 model loaded from a .g2q file."""
    def __init__(
        self,
        path: Union[str, PathLike[str]],
        ctx: Optional[int] = None,
        kv: str = "f16",
        threads: Optional[int] = None,
        mmap: bool = False,
        verify: bool = False,
    ) -> None: ...
    @property
    def info(self) -> Dict[str, Any]: ...
    def tokenize(self, text: str) -> List[int]: ...
    def detokenize(self, ids: Sequence[int]) -> str: ...
    def generate(
        self,
        prompt: str,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        stream: bool = False,
        task: Optional[str] = None,
        ignore_eos: bool = False,
    ) -> Union[str, TextStream]: ...
    @overload
    def score(self, texts: str, window: Optional[int] = None, stride: Optional[int] = None) -> Score: ...
    @overload
    def score(
        self, texts: Sequence[str], window: Optional[int] = None, stride: Optional[int] = None
    ) -> List[Score]: ...
    def logits(self, ids: Sequence[int], last_only: bool = False) -> "numpy.ndarray[Any, numpy.dtype[numpy.float32]]": ...
    def chat(
        self,
        system: str = "",
        template: Optional[str] = None,
        stop: Optional[str] = None,
        max_tokens: int = 64,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: Optional[int] = None,
    ) -> Chat: ...

def convert(
    src_dir: Union[str, PathLike[str]],
    out_path: Union[str, PathLike[str]],
    quant: str = "q8",
    force: bool = False,
    name: Optional[str] = None,
) -> None: ...
