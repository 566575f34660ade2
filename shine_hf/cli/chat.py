"""`shine chat`: ask questions about documents (internalized on start) or saved adapters, in the terminal.

A router (`shine internalize --route` output, a Hub repo it was pushed to, or `--route` with one
document) answers each question from the adapters of the chunks it matches best
(`shine_hf.routing.RoutedAdapter`).

On a terminal it is an interactive prompt; through a pipe it reads one question per line and
writes one answer per line on stdout (everything else goes to stderr), so it can be scripted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from ._common import console, error_console, fail_cleanly, unescape
from ._options import (
    ComposeMethod,
    backbone_option,
    batch_size_option,
    chunk_tokens_option,
    compose_option,
    device_option,
    dtype_option,
    max_new_tokens_option,
    model_option,
    overlap_tokens_option,
    revision_option,
    route_option,
    top_k_option,
)

if TYPE_CHECKING:
    from ..modeling import ShineAdapter, ShineForCausalLM
    from ..routing import RoutedAdapter

PROMPT = "> "
COMMANDS_HELP = (
    ("/help", "this list"),
    ("/context", "also answer with the documents in the prompt, for comparison (again: stop)"),
    ("/exit", "end the chat (also /quit, Ctrl-D or Ctrl-C)"),
)


def chat_command(
    model: Annotated[str, model_option()],
    document: Annotated[list[Path] | None, typer.Option(
        "--document", "-d", metavar="FILE", show_default=False,
        help="A UTF-8 text file to internalize and answer from (repeat for several: they are composed).")] = None,
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", "-a", metavar="DIR", show_default=False,
        help="A saved adapter (shine internalize output, or a Hub repo id) to answer from (repeat for several: "
             "they are composed). A router (a directory written by shine internalize --route, or a Hub repo it "
             "was pushed to) answers alone, each question from the chunks it matches best.")] = None,
    compose: Annotated[ComposeMethod | None, compose_option(
        "How several documents or adapters (and a long document's chunks; with routing, a question's top-K "
        "chunks) become one: concat (the sum of their deltas) or mean (their average). Default: concat; a "
        "saved router: the rule it was saved with.")] = None,
    route: Annotated[bool, route_option(
        "Internalize the --document (one) in chunks (--chunk-tokens), an adapter per chunk, and answer each "
        "question from the chunks it matches best instead of from one adapter of the whole document.")] = False,
    top_k: Annotated[int | None, top_k_option(
        "With routing (--route, or a router directory given with --adapter): answer each question from the K "
        "chunks that match it best, composed with --compose (default: 1, or the router's saved K; at most the "
        "number of chunks).")] = None,
    max_new_tokens: Annotated[int, max_new_tokens_option()] = 128,
    context_template: Annotated[str | None, typer.Option(
        "--context-template", metavar="TEXT",
        help="User turn of /context answers, with {context} and {question} (\\n for a newline; default: the "
             "reference's).")] = None,
    batch_size: Annotated[int, batch_size_option("Documents (or chunks of a long one) per forward pass.")] = 8,
    chunk_tokens: Annotated[int | None, chunk_tokens_option()] = None,
    overlap_tokens: Annotated[int, overlap_tokens_option()] = 0,
    backbone: Annotated[str | None, backbone_option()] = None,
    revision: Annotated[str | None, revision_option()] = None,
    device: Annotated[str | None, device_option()] = None,
    dtype: Annotated[str | None, dtype_option()] = None,
) -> None:
    r"""Chat with a SHINE model about documents, answering from their generated adapter.

    The documents are internalized once, on start (or saved adapters are read), and composed into
    one adapter; every question is then answered by the backbone with that adapter and without the
    documents in the prompt. On a terminal: a prompt, /help lists the commands, /exit or Ctrl-D
    ends. Through a pipe: one question per line in, one answer per line out (blank lines skipped;
    with /context on, each line is the SHINE answer, a tab, then the answer with the documents in
    the prompt).

    With a router (--route over one document, or --adapter with a directory written by shine
    internalize --route or the Hub repo it was pushed to), each question is instead answered from
    the adapters of the chunks it matches best (BM25 over the chunk texts), --top-k of them composed
    with --compose.

    Examples:
      shine chat --model org/shine-qwen3-8b --document contract.txt
      shine chat --model org/shine-qwen3-8b -a adapters/a -a adapters/b
      shine chat --model ./my-shine -d report.txt < questions.txt > answers.txt
      shine chat --model ./my-shine -a routers/book --top-k 2
      shine chat --model org/shine-qwen3-8b -a org/book-router
      shine chat --model ./my-shine -d book.txt --route --chunk-tokens 512
    """
    from ..modeling.errors import InvalidInputError
    from ..routing import is_router
    from ._documents import read_documents
    from ._model import check_chunk_options, compose_adapters, internalize_documents, load_model, route_documents

    interactive = sys.stdin.isatty()
    notes = console if interactive else error_console  # through a pipe, stdout carries the answers only
    with fail_cleanly():
        if not document and not adapter:
            raise InvalidInputError("Nothing to chat about: give --document FILE or --adapter DIR (or several).")
        routers = [name for name in adapter or [] if is_router(name)]  # a Hub id: one lookup
        _check_routing(route, top_k, document or [], adapter or [], routers)
        documents = read_documents(document or [])
        check_chunk_options(chunk_tokens, overlap_tokens)
        template = _in_context_template(context_template)
        method = (compose or ComposeMethod.concat).value
        if routers:  # one saved router, alone
            (name,) = routers
            router = _read_router(name, top_k, None if compose is None else compose.value)
            loaded = load_model(model, backbone=backbone, revision=revision, dtype=dtype, device=device,
                                console=error_console)
            _check_fits(name, router.adapters, loaded, "router")
            _chat_routed(ChatSession(loaded, router, None, template, max_new_tokens, interactive, notes), name)
            return
        saved = [_read_adapter(name) for name in adapter or []]
        loaded = load_model(model, backbone=backbone, revision=revision, dtype=dtype, device=device,
                            console=error_console)
        for name, one in zip(adapter or [], saved, strict=True):
            _check_fits(name, one, loaded)
        if route:  # one document, in chunks
            (routed,) = route_documents(loaded, documents, batch_size=batch_size, chunk_tokens=chunk_tokens,
                                        overlap_tokens=overlap_tokens, top_k=1 if top_k is None else top_k,
                                        compose=method, console=error_console)
            _chat_routed(ChatSession(loaded, routed.router, documents[0].text, template, max_new_tokens,
                                     interactive, notes), documents[0].path.name)
            return
        generated = list(internalize_documents(loaded, documents, batch_size=batch_size, chunk_tokens=chunk_tokens,
                                               overlap_tokens=overlap_tokens, compose=method,
                                               console=error_console))
        by_path = {item.document.path: item.adapter for item in generated}
        combined = compose_adapters([by_path[doc.path] for doc in documents] + saved, method)
        sources = [doc.path.name for doc in documents] + list(adapter or [])
        session = ChatSession(loaded, combined, "\n\n".join(doc.text for doc in documents) or None, template,
                              max_new_tokens, interactive, notes)
        if interactive:
            notes.print(Text(f"Answering from {_listing(sources)} (adapter rank {combined.rank}). /help lists the "
                             f"commands; /exit or Ctrl-D ends.", style="dim"))
        session.run(_terminal_reader() if interactive else _pipe_reader())


def _check_routing(route: bool, top_k: int | None, documents: list[Path], adapters: list[str],
                   routers: list[str]) -> None:
    """Raise InvalidInputError unless the sources and the routing options fit: a router (saved, or
    `--route` over a document) is the chat's only source; `--top-k` needs one."""
    from ..modeling.errors import InvalidInputError

    if route and (len(documents) != 1 or adapters):
        raise InvalidInputError("--route answers from the chunks of one document: give one --document FILE and no "
                                "--adapter (a saved router is read with --adapter DIR alone).")
    if routers and len(documents) + len(adapters) > 1:
        raise InvalidInputError(f"{routers[0]} is a router (shine internalize --route): it answers alone and cannot "
                                f"be combined with other adapters or documents.")
    if top_k is not None and not (route or routers):
        raise InvalidInputError("--top-k applies to routing: add --route (with one --document), or give a router "
                                "(shine internalize --route, or the Hub repo it was pushed to) with --adapter.")


def _read_router(name: str, top_k: int | None, method: str | None) -> RoutedAdapter:
    """The saved router `name`; `top_k` (at most its chunk count) and `method` override its own."""
    from ..routing import RoutedAdapter

    with error_console.status(Text(f"Reading the router {name}")):
        router = RoutedAdapter.from_pretrained(name, method=method)
    if top_k is not None:
        router.top_k = min(top_k, len(router))
    return router


def _chat_routed(session: ChatSession, source: str) -> None:
    """Run `session`, whose adapter is a router read from `source`."""
    if session.interactive:
        session.notes.print(Text(f"{_routing_line(source, session.adapter)} /help lists the commands; /exit or "
                                 f"Ctrl-D ends.", style="dim"))
    session.run(_terminal_reader() if session.interactive else _pipe_reader())


def _routing_line(source: str, router: RoutedAdapter) -> str:
    """`Answering from book.txt by routing over 7 chunks (top-1, concat).`"""
    chunks = "1 chunk" if len(router) == 1 else f"{len(router)} chunks"
    return f"Answering from {source} by routing over {chunks} (top-{router.top_k}, {router.method})."


def _in_context_template(template: str | None) -> str:
    from ..modeling.prompting import IN_CONTEXT_TEMPLATE

    return IN_CONTEXT_TEMPLATE if template is None else unescape(template)


def _read_adapter(name: str) -> ShineAdapter:
    from ..modeling import ShineAdapter

    with error_console.status(Text(f"Reading the adapter {name}")):
        return ShineAdapter.from_pretrained(name)


def _check_fits(name: str, adapter: ShineAdapter, model: ShineForCausalLM, kind: str = "adapter") -> None:
    from ..modeling.errors import IncompatibleAdapterError

    try:
        adapter.check_compatible(model.layers_path, model.targets, model.config.num_hidden_layers)
    except IncompatibleAdapterError as error:
        raise IncompatibleAdapterError(f"The {kind} {name} does not fit the model's backbone: {error}") from None


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} sources ({', '.join(names)})"


def _make_ctrl_c_end_the_prompt() -> None:
    """Make a Ctrl-C at the prompt end the chat at once.

    Python notices a SIGINT in the main thread only between bytecodes or when a system call returns
    EINTR. One that lands between readline printing the prompt and entering its `select` (which has
    no timeout), or in another thread (torch's workers), would wait for the next key press. The
    C-level handler writes the signal's number to the wakeup fd; a watcher thread then pokes the
    main thread with SIGWINCH for a moment: inside readline that interrupts `select`, which raises
    the pending KeyboardInterrupt; anywhere else SIGWINCH is ignored.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_kill"):
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    main_thread = threading.main_thread().ident

    def watch() -> None:
        while received := os.read(read_end, 64):
            if signal.SIGINT in received:
                for _ in range(40):  # 2 s of pokes, 50 ms apart: one lands while `select` waits
                    signal.pthread_kill(main_thread, signal.SIGWINCH)
                    time.sleep(0.05)

    threading.Thread(target=watch, name="shine-chat-ctrl-c", daemon=True).start()


def _terminal_reader() -> Callable[[], str | None]:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # not on every platform
        pass
    _make_ctrl_c_end_the_prompt()

    def read() -> str | None:
        try:
            return input(PROMPT)
        except EOFError:
            print()  # leave the terminal on a fresh line after Ctrl-D
            return None

    return read


def _pipe_reader() -> Callable[[], str | None]:
    def read() -> str | None:
        line = sys.stdin.readline()  # one line at a time, so answers can follow questions as they come
        return line if line else None

    return read


@dataclass
class ChatSession:
    """The chat loop: commands and questions in, answers out.

    Attributes:
        model: The SHINE model (its backbone answers).
        adapter: The adapter every answer uses: a `ShineAdapter`, or a `RoutedAdapter` that picks
            each question's chunks.
        context: The documents' text, for /context answers (None: only adapters were given).
        context_template: The in-context user turn, with {context} and {question}.
        max_new_tokens: Longest answer.
        interactive: A terminal (answers as they are; notes on stdout) or a pipe (one line per
            answer on stdout; notes on stderr).
        notes: Where messages that are not answers go.
    """

    model: Any
    adapter: Any
    context: str | None
    context_template: str
    max_new_tokens: int
    interactive: bool
    notes: Console
    compare: bool = False

    def run(self, read: Callable[[], str | None]) -> None:
        """Answer until `read` returns None (end of input), /exit, or Ctrl-C."""
        try:
            while (line := read()) is not None:
                if not self.handle(line.strip()):
                    break
        except KeyboardInterrupt:
            if self.interactive:
                print()

    def handle(self, line: str) -> bool:
        """Answer a question or run a command; False ends the chat."""
        if not line:
            return True
        if line.startswith("/"):
            return self._command(line.split()[0].lower())
        shine = self._generate(line, adapter=self.adapter)
        in_context = self._in_context(line) if self.compare else None
        if self.interactive:
            if in_context is None:
                console.print(Text(shine))
            else:
                console.print(Text("SHINE       ", style="bold") + Text(shine))
                console.print(Text("in context  ", style="bold") + Text(in_context))
        else:
            answers = [shine] if in_context is None else [shine, in_context]
            print("\t".join(" ".join(answer.split()) for answer in answers), flush=True)
        return True

    def _command(self, command: str) -> bool:
        if command in ("/exit", "/quit"):
            return False
        if command == "/help":
            width = max(len(name) for name, _ in COMMANDS_HELP)
            for name, meaning in COMMANDS_HELP:
                self.notes.print(Text(f"{name:<{width}}  {meaning}"))
            self.notes.print(Text("Anything else is a question about the documents.", style="dim"))
        elif command == "/context":
            if self.context is None:
                self.notes.print(Text("/context needs the documents' text: start the chat with --document FILE."))
            else:
                self.compare = not self.compare
                state = "on: the documents in the prompt" if self.compare else "off"
                self.notes.print(Text(f"In-context answers {state}."))
        else:
            self.notes.print(Text(f"Unknown command {command}: /help lists the commands."))
        return True

    def _generate(self, question: str, **options: Any) -> str:
        waiting = console.status(Text("Answering…")) if self.interactive else contextlib.nullcontext()
        with waiting:
            return self.model.generate_text(question, max_new_tokens=self.max_new_tokens, **options)

    def _in_context(self, question: str) -> str:
        """The backbone's answer with the documents in the prompt, or why there is none."""
        from ..modeling.prompting import in_context_question, question_prompt

        prompt = question_prompt(self.model.tokenizer, in_context_question(self.context, question,
                                                                         self.context_template))
        tokens = len(self.model.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"])
        limit = getattr(self.model.backbone.config, "max_position_embeddings", None)
        if limit is not None and tokens + self.max_new_tokens > limit:
            return (f"(none: the prompt with the documents is {tokens} tokens, and with {self.max_new_tokens} new "
                    f"tokens it exceeds the backbone's {limit} positions)")
        return self._generate(question, context=self.context, context_template=self.context_template)
