"""Verifiers: decide whether a model's final answer is correct, safely, at scale.

`get_verifier(spec, params)` builds one by name; `VerifyPool` runs one over many samples in
worker processes with a hard time limit per sample; `extract_answer` finds the final answer.

A new verifier is one file that registers itself (in this package, or anywhere as
"package.module:ClassName", or published under the entry-point group "selfimprove.verifiers"):

    @register("exact")
    class ExactVerifier(Verifier):
        version = "1"                     # bump when verdicts can change
        defaults = {"case_sensitive": True}  # every accepted parameter, with its default

        def verify(self, problem, sample):
            ...
            return Verdict("correct", 1.0, answer, f"answer {answer} == gold {gold}")
"""

from selfimprove.verifiers.base import Verdict, Verifier, available_verifiers, get_verifier, register
from selfimprove.verifiers.extract import extract_answer
from selfimprove.verifiers.pool import VerifyPool

__all__ = ["Verdict", "Verifier", "register", "get_verifier", "available_verifiers", "VerifyPool", "extract_answer"]
