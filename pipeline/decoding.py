"""CoT-decoding (Wang & Zhou 2024, "Chain-of-Thought Reasoning Without Prompting").

Greedy decoding commits to the single most likely first token; the paper finds that the other
top-k first tokens, each continued greedily, often reason step by step, and that the model is
more confident of the answer of such a path. So, per prompt:

1. the engine branches (`Engine.generate_branches`): the k most likely first tokens, each
   continued greedily to the end, with every generated token's text and the probabilities of
   the two most likely tokens at its position;
2. each path's final answer is found by the run's verifier (the extraction it judges by, in the
   killable worker pool: model output is hostile) and located in the path's text: the last
   occurrence of that answer, standing alone where it can (`locate_answer`);
3. the path's confidence is the mean, over the tokens of that answer, of p(top-1) - p(top-2)
   (`margin`); the character span is mapped to tokens through their texts (`token_spans`);
4. paths are ranked by confidence; a path without an answer (or whose answer cannot be found in
   its text) has no score and ranks after every scored path, never the answer of an evaluation
   when a scored path exists (precision first). Ties go to the lower first-token rank (greedy's
   first), so the order is deterministic.

Only the verifier's extracted answer is used, never its verdict: an evaluation that ranked paths
by correctness would read the gold answer.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable

from selfimprove.pipeline import schema
from selfimprove.pipeline.engines.base import Branch, BranchToken, Completion, Engine, Request, Result, SamplingParams
from selfimprove.pipeline.prompts import split_thinking
from selfimprove.pipeline.runs import check

Span = tuple[int, int]  # [start, end) in characters
# (problem id, branch) pairs -> the character span of each branch's final answer in its text, or None
AnswerSpans = Callable[[list[tuple[str, Branch]]], list["Span | None"]]
MAX_OCCURRENCES = 1000  # occurrences of an answer looked at for one standing alone (hostile text)
MAX_TRAILING = 8  # tokens at a path's end that its text leaves out (a stop string), skipped to align from the end


@dataclass
class Scored:
    branch: Branch
    confidence: float | None  # None: no answer found in the path
    span: Span | None  # the answer's characters in branch.text


@dataclass
class Decoded:
    """One prompt's paths, most confident first (or why the engine could not serve it)."""

    prompt_tokens: int = 0
    ranked: list[Scored] = field(default_factory=list)
    error: str | None = None

    def best(self) -> Scored | None:
        """The most confident path with an answer; None when no path has one."""
        return self.ranked[0] if self.ranked and self.ranked[0].confidence is not None else None

    def result(self, n: int) -> Result:
        """The n most confident paths as an engine result (completions with confidence and
        first-token rank), for the rows every stage writes. With no scored path the first is the
        greedy one (first-token rank 1), which has no answer to find either."""
        if self.error is not None:
            return Result(prompt_tokens=self.prompt_tokens, error=self.error)
        if len(self.ranked) < n:
            return Result(prompt_tokens=self.prompt_tokens,
                          error=f"cot_decoding: {len(self.ranked)} paths, fewer than the {n} wanted")
        return Result(prompt_tokens=self.prompt_tokens, completions=[
            Completion(text=s.branch.text, finish_reason=s.branch.finish_reason,
                       completion_tokens=s.branch.completion_tokens, cumulative_logprob=s.branch.cumulative_logprob,
                       confidence=s.confidence, branch_rank=s.branch.first_rank)
            for s in self.ranked[:n]])


# -- pure scoring helpers ------------------------------------------------------------------------

def token_spans(token_texts: list[str], text: str) -> list[Span | None]:
    """Each token's characters in `text`, from the token texts.

    Where the texts join to `text` this is exact. A server or detokenizer may spell a token
    otherwise (a character split across tokens, a token the text leaves out: an end of turn, a
    stop string), so tokens are then also aligned from the end while they match (up to
    MAX_TRAILING tokens that are not in the text skipped first), and a token placed that way
    takes that place, since the answer sits near the end; a token neither pass can place has
    no span (None).
    """
    spans: list[Span | None] = []
    pos = 0
    for t in token_texts:
        if not text.startswith(t, pos):
            break
        spans.append((pos, pos + len(t)))
        pos += len(t)
    if len(spans) == len(token_texts) and pos == len(text):
        return spans
    spans += [None] * (len(token_texts) - len(spans))
    end, matched, skipped = len(text), False, 0
    for i in range(len(token_texts) - 1, -1, -1):
        t = token_texts[i]
        if t and end >= len(t) and text.startswith(t, end - len(t)):
            spans[i] = (end - len(t), end)
            end -= len(t)
            matched = True
        elif matched and not t:
            spans[i] = (end, end)
        elif matched or skipped == MAX_TRAILING:
            break
        else:
            skipped += bool(t)  # an empty token (end of turn) is skipped for free
    return spans


def answer_positions(token_texts: list[str], text: str, span: Span) -> list[int]:
    """The tokens that hold any character of the answer span (empty: none can be placed)."""
    start, end = span
    return [i for i, s in enumerate(token_spans(token_texts, text))
            if s is not None and s[0] < end and s[1] > start]


def margin(tokens: list[BranchToken], positions: list[int]) -> float | None:
    """The paper's confidence: mean p(top-1) - p(top-2) over the answer's token positions."""
    if not positions:
        return None
    return sum(tokens[i].top1 - tokens[i].top2 for i in positions) / len(positions)


def path_confidence(branch: Branch, span: Span | None) -> float | None:
    if span is None:
        return None
    return margin(branch.tokens, answer_positions([t.text for t in branch.tokens], branch.text, span))


def rank(branches: list[Branch], spans: list[Span | None]) -> list[Scored]:
    """Paths by confidence, highest first; unscored paths last; ties by first-token rank."""
    check(len(spans) == len(branches), f"{len(spans)} answer spans for {len(branches)} paths")
    scored = [Scored(b, path_confidence(b, s), s) for b, s in zip(branches, spans)]
    for s in scored:
        if s.confidence is None:
            s.span = None  # an answer no token can be placed on is no answer to rank by
    return sorted(scored, key=lambda s: (s.confidence is None, -(s.confidence or 0.0), s.branch.first_rank))


def _stands_alone(text: str, start: int, end: int) -> bool:
    """No letter or digit glued to the occurrence where its own edge is one ("4" is not in "14")."""
    before, after = text[start - 1 : start], text[end : end + 1]
    return not ((before.isalnum() and text[start].isalnum()) or (after.isalnum() and text[end - 1].isalnum()))


def locate_answer(text: str, answer: str | None) -> Span | None:
    """Where the final answer a verifier extracted stands in the text it read: its last
    occurrence standing alone (else its last occurrence); a list answer joined by the extraction
    ("-2, 1" from two boxes) from its first item to its last; whitespace may differ ("3  dozen")."""
    answer = (answer or "").strip()
    if not answer or not text:
        return None
    end, fallback = len(text), None
    for _ in range(MAX_OCCURRENCES):
        i = text.rfind(answer, 0, end)
        if i < 0:
            break
        fallback = fallback or (i, i + len(answer))
        if _stands_alone(text, i, i + len(answer)):
            return i, i + len(answer)
        end = i + len(answer) - 1
    if fallback:
        return fallback
    parts = [p.strip() for p in answer.split(",") if p.strip()]
    if len(parts) > 1:
        last = locate_answer(text, parts[-1])
        first = text.rfind(parts[0], 0, last[0]) if last else -1
        if last and first >= 0:
            return first, last[1]
    words = answer.split()
    if len(words) > 1:
        found = None
        for found in re.finditer(r"\s+".join(map(re.escape, words)), text):
            pass
        if found:
            return found.start(), found.end()
    return None


# -- decoding ------------------------------------------------------------------------------------

def require_branches(engine: Engine) -> None:
    """Refuse, before any work, an engine that cannot branch (a plug-in without generate_branches)."""
    if not engine.supports_branches():
        raise ValueError(engine.no_branches())


def cot_decode(engine: Engine, requests: list[Request], k: int, max_tokens: int, answer_spans: AnswerSpans,
               params: SamplingParams | None = None, desc: str = "cot-decoding") -> list[Decoded]:
    """Per request, its k paths ranked by the model's confidence in their answers.

    `params` gives the stop strings and chat-template arguments (its temperature, top_p, top_k,
    min_p and n do not apply: the paths are greedy); `answer_spans` finds the answers, e.g.
    `verifier_spans(...)`.
    """
    params = dataclasses.replace(params or SamplingParams(), n=1, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0,
                                 max_tokens=max_tokens)
    results = engine.generate_branches(requests, k, params, desc=desc)
    check(len(results) == len(requests), f"engine returned {len(results)} branch results for {len(requests)} requests")
    items = [(req.key, b) for req, r in zip(requests, results) if r.error is None for b in r.branches]
    spans = answer_spans(items) if items else []
    check(len(spans) == len(items), f"{len(spans)} answer spans for {len(items)} paths")
    decoded, pos = [], 0
    for r in results:
        if r.error is not None:
            decoded.append(Decoded(r.prompt_tokens, [], r.error))
            continue
        decoded.append(Decoded(r.prompt_tokens, rank(r.branches, spans[pos : pos + len(r.branches)])))
        pos += len(r.branches)
    return decoded


def verifier_spans(problems: dict[str, dict], pool, verifier_name: str,
                   think_tags: list[str] | None = None) -> AnswerSpans:
    """Answer spans from the run's verifier: each path (after its thinking section, as the sample
    rows store it) is judged in the worker `pool`, and the answer it extracted is located in the
    text. `problems` maps problem id to its row (question, answer, metadata), as verify_table
    takes it. The verdict itself is never used, only the extracted answer."""
    from selfimprove.pipeline.verification import verify_table

    def spans(items: list[tuple[str, Branch]]) -> list[Span | None]:
        rests, rows, seen = [], [], {}
        for key, branch in items:
            rest = split_thinking(branch.text, think_tags)[1]
            rests.append(rest)
            seen[key] = seen.get(key, -1) + 1
            rows.append({"problem_id": key, "sample_idx": seen[key], "text": rest, "finish_reason": branch.finish_reason})
        verdicts = verify_table(schema.table(rows, schema.SAMPLES), problems, pool, verifier_name)
        out: list[Span | None] = []
        for (_, branch), rest, extracted in zip(items, rests, verdicts["extracted"].to_pylist()):
            found = locate_answer(rest, extracted)
            shift = len(branch.text) - len(rest)  # the thinking section before what was read
            out.append(None if found is None else (found[0] + shift, found[1] + shift))
        return out

    return spans
