"""The page's step store (server/static/steps.js) on its own, in Chromium: its bounds. A
long or hostile stream that defines structure after structure leaves the page at most
1,000 of them (the current one always kept), and a step of a structure the page dropped is
skipped and counted, not kept and not rejected as invalid."""

from __future__ import annotations

import pytest
from viewer_support import load_module

BOUND = """() => {
  const { StepStore, MAX_STRUCTURES } = window.steps;
  const u8 = (ids) => new Uint8Array(new BigUint64Array(ids.map(BigInt)).buffer);
  const u4 = (xs) => new Uint8Array(new Uint32Array(xs).buffer);
  const f8 = (xs) => new Uint8Array(new Float64Array(xs).buffer);
  const store = new StepStore();
  let id = 0, pass = 0;
  const define = (k) => {
    // one node (id, made in the step) using input 0
    store.noteId(++id);
    store.notePass(++pass);
    const event = { type: "structure", structure: k, ids: u8([id]), offsets: u4([0]),
      inputs: u8([0]), order: u4([0, 1]), root: 0 };
    const problem = store.structureProblem(event);
    if (problem) throw new Error(problem);
    store.addStructure(event);
    const step = { type: "step", step: k, structure: k, first: id, pass,
      data: f8([k, 1]), grad: f8([1, k]) };
    const stepProblem = store.stepProblem(step);
    if (stepProblem) throw new Error(stepProblem);
    store.addStep(step);
  };
  for (let k = 1; k <= MAX_STRUCTURES + 5; k++) define(k);
  const kept = store.structures.size;
  const firstKept = Math.min(...store.structures.keys());
  // a values-only step of structure 1, dropped long ago
  const old = { type: "step", step: MAX_STRUCTURES + 6, structure: 1, first: id + 1, pass: pass + 1,
    data: f8([0, 0]), grad: f8([0, 0]) };
  const problem = store.stepProblem(old);
  const record = store.addStep(old);
  return { kept, firstKept, current: store.current.number, problem, record, skipped: store.skipped,
    records: store.records.length, max: MAX_STRUCTURES };
}"""


@pytest.fixture
def store_page(browser):
    page = browser.new_page()
    page.goto("about:blank")
    load_module(page, "steps.js", ["StepStore", "MAX_STRUCTURES"], "steps")
    yield page
    page.close()


def test_the_page_keeps_at_most_1000_structures_and_skips_steps_of_dropped_ones(store_page):
    got = store_page.evaluate(BOUND)
    assert got["max"] == 1000
    assert got["kept"] == 1000
    assert got["firstKept"] == 6  # the least recently used went first
    assert got["current"] == 1005  # the structure of the latest step is kept
    assert got["problem"] is None  # not invalid: the page dropped it, the stream is fine
    assert got["record"] is None and got["skipped"] == 1
    assert got["records"] == 1005  # every step's record kept (their loss), none for the skipped
