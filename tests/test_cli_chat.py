"""`shine chat` on the shipped toy models: questions piped in (a real process, and in-process), an
interactive session in a pseudo-terminal, composed sources, /context, routers (a saved one, and
--route over a document), and one-line user errors."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from cli_checks import one_line_error
from facts_documents import facts_model, held_out, long_document, write_documents
from typer.testing import CliRunner

from shine_hf import ShineAdapter
from shine_hf.assets import FACTS_CONTEXT_TEMPLATE, FACTS_SHINE
from shine_hf.cli import app
from shine_hf.cli._common import console
from shine_hf.cli.chat import ChatSession, _routing_line
from shine_hf.routing import RoutedAdapter
from shine_hf.testing.models import tiny_shine

runner = CliRunner()
MODEL = ["--model", str(FACTS_SHINE)]
TEMPLATE_ARG = FACTS_CONTEXT_TEMPLATE.replace("\n", "\\n")  # as typed in a shell
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """The first held-out document's adapter, saved as `shine internalize` saves it."""
    directory = tmp_path_factory.mktemp("adapters") / "doc0"
    facts_model().internalize(held_out(1)[0]["context"]).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def saved_router(tmp_path_factory):
    """Four held-out documents in one text, saved as a router of 40-token chunks: one document each."""
    directory = tmp_path_factory.mktemp("routers") / "four"
    router = RoutedAdapter.from_document(facts_model(), long_document(held_out(4)), chunk_tokens=40)
    assert len(router) == 4
    router.save_pretrained(directory)
    return directory


def test_answers_questions_piped_into_a_process(saved_adapter):
    """The issue's check: `shine chat` answers questions piped into it from a document's adapter."""
    record = held_out(1)[0]
    questions = "".join(f"{question}\n\n" for question in record["questions"])  # blank lines are skipped
    result = subprocess.run([sys.executable, "-m", "shine_hf.cli", "chat", *MODEL, "--adapter", str(saved_adapter)],
                            input=questions, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == list(record["answers"])
    assert "Traceback" not in result.stderr


def _one_question_per_document(count):
    return [record["questions"][index % len(record["questions"])] for index, record in enumerate(held_out(count))]


def test_a_saved_router_answers_each_question_from_its_chunk(saved_router):
    """`-a DIR` of a router, questions piped into a process: each answered through routing."""
    questions = _one_question_per_document(4)
    result = subprocess.run([sys.executable, "-m", "shine_hf.cli", "chat", *MODEL, "-a", str(saved_router),
                             "--max-new-tokens", "12"],
                            input="".join(f"{q}\n" for q in questions), capture_output=True, text=True, env=ENV,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    router = RoutedAdapter.from_pretrained(saved_router)
    expected = [facts_model().generate_text(q, adapter=router, max_new_tokens=12) for q in questions]
    assert result.stdout.splitlines() == expected
    answers = [record["answers"][index % len(record["answers"])] for index, record in enumerate(held_out(4))]
    assert expected == answers  # each question routed to its document's chunk
    assert "Traceback" not in result.stderr


def test_top_k_and_compose_override_the_saved_router(saved_router):
    questions = _one_question_per_document(2)
    model = facts_model()
    for top_k, method, saved_k in (("2", "mean", 2), ("9", "concat", 4)):  # at most every chunk
        result = _chat(["-a", str(saved_router), "--top-k", top_k, "--compose", method, "--max-new-tokens", "12"],
                       questions)
        assert result.exit_code == 0, result.output
        router = RoutedAdapter.from_pretrained(saved_router, top_k=saved_k, method=method)
        assert result.stdout.splitlines() == [model.generate_text(q, adapter=router, max_new_tokens=12)
                                              for q in questions]


def test_route_over_a_document(tmp_path):
    """`-d FILE --route`: the document internalized in chunks, each question routed; /context still works."""
    records = held_out(4)
    text = long_document(records)
    (tmp_path / "four.txt").write_text(text)
    questions = _one_question_per_document(4)
    result = _chat(["-d", str(tmp_path / "four.txt"), "--route", "--chunk-tokens", "40", "--top-k", "2",
                    "--max-new-tokens", "12", "--context-template", TEMPLATE_ARG],
                   [*questions[:3], "/context", questions[3]])
    assert result.exit_code == 0, result.output
    model = facts_model()
    router = RoutedAdapter.from_document(model, text, chunk_tokens=40, top_k=2)
    expected = [model.generate_text(q, adapter=router, max_new_tokens=12) for q in questions]
    lines = result.stdout.splitlines()
    assert lines[:3] == expected[:3]
    shine, in_context = lines[3].split("\t")
    assert shine == expected[3] and in_context


def test_the_start_line_says_it_routes(saved_router):
    router = RoutedAdapter.from_pretrained(saved_router, top_k=2)
    assert _routing_line("four", router) == "Answering from four by routing over 4 chunks (top-2, concat)."


class Terminal:
    """The controlling side of a pseudo-terminal: what the program showed, read up to what a test expects."""

    ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.shown = bytearray()
        self.position = 0  # in the text without terminal escape codes: where the next expectation starts

    def text(self) -> bytes:
        return self.ANSI.sub(b"", bytes(self.shown))

    def expect(self, pattern: str | bytes, timeout: float = 120) -> None:
        """Read until `pattern` appears after the previous expectation's match (escape codes ignored)."""
        pattern = pattern.encode() if isinstance(pattern, str) else pattern
        deadline = time.time() + timeout
        while (found := self.text().find(pattern, self.position)) < 0:
            remaining = deadline - time.time()
            assert remaining > 0, f"{pattern!r} never came; the terminal showed {self.text()!r}"
            if select.select([self.fd], [], [], remaining)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the program ended and closed the terminal
                    chunk = b""
                assert chunk, f"the terminal closed before {pattern!r}; it showed {self.text()!r}"
                self.shown += chunk
        self.position = found + len(pattern)

    def type(self, keys: str | bytes) -> None:
        os.write(self.fd, keys.encode() if isinstance(keys, str) else keys)


def _exit_code(pid: int, timeout: float) -> int | None:
    """The exit code of child `pid` once it ends (None: still running after `timeout` seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("end", [b"\x04", b"\x03"], ids=["ctrl-d", "ctrl-c"])
def test_an_interactive_session_in_a_terminal(tmp_path, end):
    """A pseudo-terminal that is the program's controlling terminal, as a shell gives it: Ctrl-C is SIGINT."""
    record = held_out(1)[0]
    (document,) = write_documents(tmp_path, [record])
    command = [sys.executable, "-m", "shine_hf.cli", "chat", *MODEL, "--document", str(document),
               "--context-template", TEMPLATE_ARG]
    pid, primary = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pseudo-terminal
        # As a shell starts a foreground program: signals at their defaults. pytest itself may have been
        # started with SIGINT ignored (a background job of a non-interactive shell, as CI runners do),
        # and an ignored signal stays ignored across exec.
        for number in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(sys.executable, command, {**ENV, "TERM": "xterm"})
    terminal = Terminal(primary)
    code = None
    try:
        terminal.expect("/exit or Ctrl-D ends.")
        terminal.expect("> ")
        terminal.type(f"{record['questions'][0]}\n")
        terminal.expect(f"{record['answers'][0]}\r\n")
        terminal.expect("> ")
        terminal.type("/context\n")
        terminal.expect("In-context answers on")
        terminal.type(f"{record['questions'][1]}\n")
        terminal.expect(f"SHINE       {record['answers'][1]}\r\n")
        terminal.expect(f"in context  {record['answers'][1]}\r\n")
        terminal.expect("> ")
        terminal.type(end)
        code = _exit_code(pid, timeout=60)
    finally:
        if code is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(primary)
    assert code == 0
    assert b"Traceback" not in terminal.text() and b"Error" not in terminal.text()


def _chat(arguments, lines):
    return runner.invoke(app, ["chat", *MODEL, *arguments], input="".join(f"{line}\n" for line in lines))


def test_documents_are_internalized_and_composed(tmp_path):
    records = held_out(2)
    documents = write_documents(tmp_path, records)
    questions = [records[0]["questions"][0], records[1]["questions"][1]]
    model = facts_model()
    separate = model.internalize([record["context"] for record in records])
    for method in ("concat", "mean"):
        result = _chat(["-d", str(documents[0]), "-d", str(documents[1]), "--compose", method,
                        "--max-new-tokens", "12"], questions)
        assert result.exit_code == 0, result.output
        composed = ShineAdapter.compose([separate[0], separate[1]], method)
        assert result.stdout.splitlines() == model.generate_text(questions, adapter=composed, max_new_tokens=12)


def test_documents_and_adapters_compose_together(tmp_path, saved_adapter):
    records = held_out(2)
    (_, second) = write_documents(tmp_path, records)
    question = records[1]["questions"][0]
    result = _chat(["--document", str(second), "--adapter", str(saved_adapter), "--compose", "mean"], [question])
    assert result.exit_code == 0, result.output
    model = facts_model()
    composed = ShineAdapter.compose([model.internalize(records[1]["context"]),
                                     ShineAdapter.from_pretrained(saved_adapter)], "mean")
    assert result.stdout.splitlines() == [model.generate_text(question, adapter=composed, max_new_tokens=128)]


def test_commands_through_a_pipe_keep_stdout_for_answers(tmp_path):
    record = held_out(1)[0]
    (document,) = write_documents(tmp_path, [record])
    lines = ["/help", record["questions"][0], "/nope", "/context", record["questions"][1], "/exit",
             record["questions"][2]]
    result = _chat(["-d", str(document), "--context-template", TEMPLATE_ARG], lines)
    assert result.exit_code == 0, result.output
    # one line per question until /exit; with /context on: the SHINE answer, a tab, the in-context one
    assert result.stdout.splitlines() == [record["answers"][0], f"{record['answers'][1]}\t{record['answers'][1]}"]
    assert "/context" in result.stderr and "Unknown command /nope" in result.stderr
    assert "In-context answers on" in result.stderr


def test_context_too_long_for_the_backbone_says_so(tmp_path):
    """A long document is chunked for SHINE; the in-context answer is refused with the token counts."""
    records = held_out(20)
    (tmp_path / "long.txt").write_text(long_document(records))
    result = _chat(["-d", str(tmp_path / "long.txt"), "--max-new-tokens", "8"],
                   ["/context", records[0]["questions"][0]])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    shine, in_context = line.split("\t")
    assert shine and re.fullmatch(r"\(none: the prompt with the documents is \d+ tokens, and with 8 new tokens it "
                                  r"exceeds the backbone's 512 positions\)", in_context), in_context


def test_context_needs_documents(saved_adapter):
    result = _chat(["--adapter", str(saved_adapter)], ["/context"])
    assert result.exit_code == 0 and result.stdout == ""
    assert "/context needs the documents' text" in result.stderr


def test_ctrl_c_while_answering_ends_the_session_cleanly():
    class Interrupting:
        tokenizer = None

        def generate_text(self, *args, **kwargs):
            raise KeyboardInterrupt

    session = ChatSession(Interrupting(), adapter=None, context=None, context_template="{context}{question}",
                          max_new_tokens=4, interactive=False, notes=console)
    lines = iter(["a question", "never read"])
    session.run(lambda: next(lines))
    assert next(lines) == "never read"


@pytest.fixture(scope="module")
def foreign_adapter(tmp_path_factory):
    """An adapter of another backbone (a tiny random Qwen3)."""
    directory = tmp_path_factory.mktemp("foreign") / "qwen3"
    tiny_shine("qwen3").internalize("Tarsk is the capital of Veloria.").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def foreign_router(tmp_path_factory):
    """A router of another backbone (a tiny random Qwen3)."""
    directory = tmp_path_factory.mktemp("foreign") / "qwen3-router"
    texts = ["Tarsk is the capital of Veloria.", "Mivebu lives in Hulvor."]
    RoutedAdapter(tiny_shine("qwen3").internalize(texts), texts).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ([], "Nothing to chat about: give --document FILE or --adapter DIR"),
        (["-d", "{tmp}/missing.txt"], "No such document: {tmp}/missing.txt"),
        (["-a", "{tmp}/no-adapter"], "{tmp}/no-adapter"),
        (["-a", "{foreign}"], "The adapter {foreign} does not fit the model's backbone"),
        (["-d", "{tmp}/doc.txt", "--dtype", "float8"], "Unknown dtype 'float8'"),
        (["-d", "{tmp}/doc.txt", "--compose", "sum"], "--compose"),
        (["-d", "{tmp}/doc.txt", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["-d", "{tmp}/doc.txt", "--chunk-tokens", "8", "--overlap-tokens", "8"],
         "must be smaller than --chunk-tokens"),
        (["-d", "{tmp}/doc.txt", "--model", "{tmp}/no-checkpoint"], "No such checkpoint directory"),
        (["-a", "{router}", "-a", "{adapter}"], "{router} is a router (shine internalize --route): it answers alone"),
        (["-d", "{tmp}/doc.txt", "-a", "{router}"], "{router} is a router"),
        (["-a", "{router}", "-a", "{router}"], "{router} is a router"),
        (["-d", "{tmp}/doc.txt", "-d", "{tmp}/doc.txt", "--route"], "--route answers from the chunks of one document"),
        (["-d", "{tmp}/doc.txt", "-a", "{adapter}", "--route"], "--route answers from the chunks of one document"),
        (["-a", "{router}", "--route"], "--route answers from the chunks of one document"),
        (["-d", "{tmp}/doc.txt", "--top-k", "2"], "--top-k applies to routing"),
        (["-a", "{adapter}", "--top-k", "2"], "--top-k applies to routing"),
        (["-a", "{router}", "--top-k", "0"], "--top-k"),
        (["-a", "{foreign_router}"], "The router {foreign_router} does not fit the model's backbone"),
        (["-d", "{tmp}/doc.txt", "--route", "--chunk-tokens", "5000"], "beyond what the backbone can read"),
    ],
)
def test_user_errors_are_one_line(tmp_path, foreign_adapter, foreign_router, saved_router, saved_adapter,
                                  arguments, fragment):
    (tmp_path / "doc.txt").write_text("Mivebu lives in Hulvor.")
    names = {"tmp": tmp_path, "foreign": foreign_adapter, "foreign_router": foreign_router,
             "router": saved_router, "adapter": saved_adapter}
    given = [argument.format(**names) for argument in arguments]
    result = _chat(given, ["Where does Mivebu live?"])
    one_line_error(result, fragment.format(**names))
    assert result.stdout == ""
