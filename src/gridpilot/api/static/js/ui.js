// Shared pieces of the page: the problem banner and pollers.

import { $, el } from "./dom.js";
import { isAbort } from "./api.js";

// ----------------------------------------------------------------------------- problems

// One line per source ("power flow", "devices", ...): a success of one view clears only its
// own line, so a failing source stays visible while the others work.
const problems = new Map();
const MAX_PROBLEMS = 8;

export function setProblem(key, message) {
  problems.delete(key);
  problems.set(key, message);
  while (problems.size > MAX_PROBLEMS) problems.delete(problems.keys().next().value);
  renderProblems();
}

export function clearProblem(key) {
  if (problems.delete(key)) renderProblems();
}

export function clearAllProblems() {
  problems.clear();
  renderProblems();
}

function renderProblems() {
  const box = $("problems");
  box.replaceChildren(...[...problems].map(([key, message]) =>
    el("p", { "data-problem": key }, el("strong", { text: key + ": " }), message)));
  box.hidden = problems.size === 0;
}

// ------------------------------------------------------------------------------ pollers

/**
 * Runs `task(signal)` now and then `everyMs` after each run ends (never two at once), until
 * stopped. `everyMs`: milliseconds, or a function returning them (asked before each wait).
 * A failure is shown as a problem under `name` and retried; a success clears it.
 * While the tab is hidden the poller waits, so a forgotten tab costs the server nothing.
 */
export class Poller {
  constructor(name, task, everyMs) {
    this.name = name;
    this.task = task;
    this.everyMs = everyMs;
    this.timer = null;
    this.controller = null;
    this.running = false;
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.run();
  }

  /** Run now (e.g. after an action), keeping the schedule. */
  kick() {
    if (!this.running) return;
    clearTimeout(this.timer);
    if (this.controller) return; // a run is under way; it schedules the next
    this.run();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async run() {
    if (!this.running) return;
    if (document.hidden) {
      this.schedule();
      return;
    }
    const controller = new AbortController();
    this.controller = controller;
    try {
      await this.task(controller.signal);
      clearProblem(this.name);
    } catch (err) {
      if (!isAbort(err) && !controller.signal.aborted && err.status !== 401) {
        setProblem(this.name, `${err.message} (retrying every ${this.delay() / 1000} s)`);
      }
    } finally {
      if (this.controller === controller) this.controller = null;
      this.schedule();
    }
  }

  delay() {
    return typeof this.everyMs === "function" ? this.everyMs() : this.everyMs;
  }

  schedule() {
    if (!this.running) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(), this.delay());
  }
}
