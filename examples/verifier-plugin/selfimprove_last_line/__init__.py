"""A verifier from outside the selfimprove repository, found through its entry point.

`last_line`: correct when the gold answer appears as a whole word in the output's last
non-empty line ("The answer is 42." for gold 42; not "The answer is 421.").
"""

import re

from selfimprove.verifiers import Verdict, Verifier


class LastLineVerifier(Verifier):
    name = "last_line"
    version = "1"
    defaults = {"case_sensitive": False}

    def verify(self, problem, sample):
        lines = [line.strip() for line in (sample.get("text") or "").splitlines() if line.strip()]
        if not lines:
            return Verdict("no_answer", 0.0, None, "empty output")
        last, gold = lines[-1][-500:], str(problem.get("answer") or "").strip()
        if not gold:
            return Verdict("error", 0.0, None, "problem has no gold answer")
        flags = 0 if self.params()["case_sensitive"] else re.IGNORECASE
        ok = re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", last, flags) is not None
        return Verdict("correct" if ok else "wrong", float(ok), last[-80:],
                       f"gold {gold!r} {'is' if ok else 'is not'} in the last line")
