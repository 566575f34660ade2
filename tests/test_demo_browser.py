"""`shine demo` in a real headless browser: paste, internalize, ask, read both answers, download the adapter.

Starts `python -m shine_hf.cli demo` (the shipped toy models) on a free local port and drives it with
Playwright through Debian's Chromium (`scripts/install_browser.sh` installs it; Playwright's own
browser download is never used). The screenshot of the answered page is saved to
`$SHINE_TEST_ARTIFACTS/demo.png` (default `tests/artifacts/demo.png`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from playwright.sync_api import expect, sync_playwright
from transformers import AutoModelForCausalLM, AutoTokenizer

from shine_hf.assets import FACTS_BACKBONE, FACTS_DATA
from shine_hf.modeling.prompting import question_prompt
from shine_hf.testing.facts import synthetic_facts

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root on a closed network: no sandbox, no GPU, nothing that phones home.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("SHINE_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
STARTUP_TIMEOUT_S = 180
MODEL_TIMEOUT_MS = 120_000  # two shared CPU cores can be slow; a healthy run takes a few seconds

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: run `bash scripts/install_browser.sh` (CI does)"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """`shine demo` running in a subprocess, as a user starts it; its URL."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("demo") / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "shine_hf.cli", "demo", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"shine demo exited with code {server.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"shine demo did not answer on {url} within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_paste_internalize_ask_and_download(demo_url, tmp_path):
    record = synthetic_facts(**FACTS_DATA)["test"][0]  # the held-out document the page offers
    question, answer = record["questions"][1], record["answers"][1]  # "Where does Mivebu live?" -> "Hulvor"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, accept_downloads=True,
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(MODEL_TIMEOUT_MS)
            page.goto(demo_url)
            page.locator("#document textarea").fill(record["context"])
            page.locator("#internalize").click()
            expect(page.locator("#status")).to_contain_text("✓ Internalized", timeout=MODEL_TIMEOUT_MS)
            expect(page.locator("#status")).to_contain_text("one forward pass")

            page.locator("#question textarea").fill(question)
            page.locator("#ask").click()
            expect(page.locator("#context-timing")).to_contain_text("Answered in", timeout=MODEL_TIMEOUT_MS)
            shine_answer = page.locator("#shine-answer textarea").input_value()
            context_answer = page.locator("#context-answer textarea").input_value()
            timings = page.locator("#shine-timing").inner_text(), page.locator("#context-timing").inner_text()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
            assert (shine_answer, context_answer) == (answer, answer)
            assert "through the LoRA" in timings[0] and "document in the prompt" in timings[1]

            with page.expect_download() as download:
                page.locator("#download").click()
            zip_path = tmp_path / download.value.suggested_filename
            download.value.save_as(zip_path)
        finally:
            browser.close()

    assert zip_path.name.startswith("shine-adapter-") and zip_path.suffix == ".zip"
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "unzipped")
    adapter_dir = tmp_path / "unzipped" / zip_path.stem
    # PEFT alone, on a freshly loaded backbone, answers from the downloaded adapter as the page did.
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(FACTS_BACKBONE), adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(FACTS_BACKBONE)
    ids = tokenizer(question_prompt(tokenizer, question), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        output = peft_model.generate(input_ids=ids, max_new_tokens=8, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    assert tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip() == answer
