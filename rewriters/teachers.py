"""Teachers: whoever writes the prompts the rewriter is distilled from.

A :class:`Teacher` turns one query plus a list of ``(task, target_length)`` requests into one
prompt per request. :class:`~rewriters.builtin_teacher.BuiltinTeacher` composes them offline;
:class:`OpenAITeacher` asks any OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from .commands import INTENTS, LENGTH_MAX, LENGTH_MIN, TASKS, check_task
from .errors import ConfigError, TeacherError
from .grounding import Grounder, GroundItem, ground_query

__all__ = ["TeacherReply", "Teacher", "OpenAITeacher"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9']+")


@dataclass
class TeacherReply:
    """What a teacher answers for one query."""

    intent: str  # the query's intent: the one given, or the teacher's own label when none was
    prompts: list[tuple[str, str]] = field(default_factory=list)  # (task, prompt), request order


class Teacher(Protocol):
    """Anything that writes prompts for a query; ``name`` is stored in each Example."""

    name: str

    async def generate(
        self, query: str, intent: str | None, requests: list[tuple[str, int]]
    ) -> TeacherReply:
        """One prompt per ``(task, target_length_in_words)`` request, in request order."""
        ...


def _check_requests(
    query: str, intent: str | None, requests: list[tuple[str, int]]
) -> list[tuple[str, int]]:
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f"query {query!r} must be non-blank text")
    if intent is not None and intent not in INTENTS:
        raise ConfigError(f"unknown intent {intent!r}; allowed: {', '.join(INTENTS)} or None")
    if not requests:
        raise ConfigError("requests is empty; ask for at least one (task, length)")
    out = []
    for task, length in requests:
        check_task(task)
        if isinstance(length, bool) or not isinstance(length, int):
            raise ConfigError(f"length {length!r} must be a whole number of words")
        if not LENGTH_MIN <= length <= LENGTH_MAX:
            raise ConfigError(f"length {length} is out of range {LENGTH_MIN}-{LENGTH_MAX} words")
        out.append((task, length))
    return out


_SYSTEM = """You write search prompts for a multimodal search engine.
For a user's search query you write prompts of two tasks:
- "image": a text prompt for CLIP image retrieval, like a text-to-image prompt: subject, setting, \
medium or style, lighting, colours, composition, mood.
- "template": a prompt for searching a library of design templates (flyers, invitations, social \
posts, slide decks, menus, resumes): template kind, occasion, style, typography, colour palette, \
layout and placeholders.
Each prompt must be a single line with exactly the requested number of words (words are separated \
by spaces) and must read fluently; never pad with filler.
Also label the query's intent: "image" (the user wants pictures), "template" (the user wants an \
editable design) or "both" (ambiguous).
Reply with only a JSON object and no other text: {"intent": "image|template|both", "prompts": \
[{"task": "image", "length": 12, "prompt": "..."}]} with exactly one item per request, in the \
request order, copying each request's task and length."""

# appended to _SYSTEM when the teacher has a grounder
_GROUNDED = """
When the request carries "context" (catalogue items this query finds), write in the catalogue's \
vocabulary shown there while keeping the query's meaning."""

_FEW_SHOT: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {"query": "golden retriever puppy on a beach", "intent": None,
         "requests": [{"task": "image", "length": 12}, {"task": "template", "length": 6}]},
        {"intent": "image", "prompts": [
            {"task": "image", "length": 12, "prompt":
             "a golden retriever puppy running on a sandy beach at sunset, cinematic"},
            {"task": "template", "length": 6, "prompt": "playful dog beach day poster template"},
        ]},
    ),
    (
        {"query": "birthday party invitation", "intent": "template",
         "requests": [{"task": "template", "length": 13}, {"task": "image", "length": 5}]},
        {"intent": "template", "prompts": [
            {"task": "template", "length": 13, "prompt": "minimalist birthday party invitation "
             "template, bold serif headline, pastel pink palette, centered layout"},
            {"task": "image", "length": 5, "prompt": "colorful balloons and birthday cake"},
        ]},
    ),
]

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


class _Malformed(Exception):
    """The reply arrived but is not the JSON object we asked for (retried)."""


def _user_message(query: str, intent: str | None, requests: list[tuple[str, int]],
                  context: list[GroundItem] | None = None) -> str:
    msg: dict[str, Any] = {"query": query, "intent": intent,
                           "requests": [{"task": t, "length": n} for t, n in requests]}
    if context:
        msg["context"] = [{"title": it.title, "tags": list(it.tags), "category": it.category}
                          for it in context]
    return json.dumps(msg)


def _parse_content(content: Any, intent: str | None,
                   requests: list[tuple[str, int]]) -> TeacherReply:
    """Strictly parse the model's message into a reply matching ``requests``."""
    if not isinstance(content, str):
        raise _Malformed(f"message content is {type(content).__name__}, not text")
    text = content.strip()
    if m := _FENCE.match(text):
        text = m.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Malformed(f"content is not JSON ({e.msg}): {text[:80]!r}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("prompts"), list):
        raise _Malformed("content is not an object with a 'prompts' list")
    label = intent
    if label is None:
        label = obj.get("intent")
        if label not in INTENTS:
            raise _Malformed(f"intent {label!r} is not one of {', '.join(INTENTS)}")
    pending: dict[tuple[str, int], list[str]] = {}
    for i, item in enumerate(obj["prompts"]):
        if not isinstance(item, dict):
            raise _Malformed(f"prompts[{i}] is not an object")
        task, n, prompt = item.get("task"), item.get("length"), item.get("prompt")
        if task not in TASKS:
            raise _Malformed(f"prompts[{i}].task {task!r} is not a known task")
        if isinstance(n, bool) or not isinstance(n, int):
            raise _Malformed(f"prompts[{i}].length {n!r} is not an integer")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _Malformed(f"prompts[{i}].prompt is missing or empty")
        if "\n" in prompt.strip() or "\r" in prompt.strip():
            raise _Malformed(f"prompts[{i}].prompt spans several lines")
        pending.setdefault((task, n), []).append(prompt.strip())
    out = []
    for task, n in requests:
        if not pending.get((task, n)):
            raise _Malformed(f"no prompt for request ({task}, {n})")
        out.append((task, pending[(task, n)].pop(0)))
    extra = sum(len(v) for v in pending.values())
    if extra:
        raise _Malformed(f"{extra} prompt(s) beyond the {len(requests)} requested")
    return TeacherReply(label, out)


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers["retry-after"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: use our own backoff


class OpenAITeacher:
    """A teacher behind any OpenAI-compatible ``/chat/completions`` endpoint."""

    MAX_RETRY_AFTER_S = 60.0  # cap on a server's Retry-After, seconds
    MAX_BACKOFF_S = 30.0  # cap on one backoff wait (jitter included), seconds

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout_s: float = 30.0, max_retries: int = 4, backoff_s: float = 0.5,
                 temperature: float = 0.9, client: httpx.AsyncClient | None = None,
                 grounder: Grounder | None = None, grounding_k: int = 8):
        """Args:
            base_url: e.g. "http://localhost:8000/v1"; "/chat/completions" is appended.
            model: the served model name, sent as "model".
            api_key: sent as "Authorization: Bearer ..." when set.
            timeout_s: per-request timeout, seconds (> 0).
            max_retries: retries after the first attempt on 429, 5xx, timeouts, connection
                errors and malformed replies (>= 0).
            backoff_s: first backoff wait, doubled each retry, plus jitter (>= 0).
            temperature: sampling temperature sent to the endpoint.
            client: an httpx.AsyncClient to use (not closed by ``aclose``); one is made if None.
            grounder: when set, each query's top ``grounding_k`` catalogue items for the first
                requested task travel with it as "context", and the model is told to write in
                their vocabulary.
            grounding_k: catalogue items sent as context, >= 1.
        """
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url {base_url!r} must start with http:// or https://")
        if not model:
            raise ConfigError("model must name the served model, e.g. 'qwen2.5-7b-instruct'")
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0:
            raise ConfigError(f"need timeout_s > 0 (got {timeout_s}), max_retries >= 0 "
                              f"(got {max_retries}) and backoff_s >= 0 (got {backoff_s})")
        if isinstance(grounding_k, bool) or not isinstance(grounding_k, int) or grounding_k < 1:
            raise ConfigError(f"grounding_k {grounding_k!r} must be a whole number >= 1")
        self.grounder, self.grounding_k = grounder, grounding_k
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout_s = model, api_key, timeout_s
        self.max_retries, self.backoff_s, self.temperature = max_retries, backoff_s, temperature
        self.name = f"openai:{model}"
        self._client = client if client is not None else httpx.AsyncClient()
        self._owns_client = client is None
        self._jitter = random.Random()

    def messages(self, query: str, intent: str | None, requests: list[tuple[str, int]],
                 context: list[GroundItem] | None = None) -> list[dict[str, str]]:
        """The chat messages sent for one query: system, few-shot pairs, then the query with its
        grounding ``context`` (omitted when empty)."""
        system = _SYSTEM + _GROUNDED if self.grounder is not None else _SYSTEM
        msgs = [{"role": "system", "content": system}]
        for user, reply in _FEW_SHOT:
            msgs.append({"role": "user", "content": json.dumps(user)})
            msgs.append({"role": "assistant", "content": json.dumps(reply)})
        msgs.append({"role": "user", "content": _user_message(query, intent, requests, context)})
        return msgs

    async def generate(self, query: str, intent: str | None,
                       requests: list[tuple[str, int]]) -> TeacherReply:
        """Ask the endpoint for one prompt per request, retrying transient failures.

        Args:
            query: the search query.
            intent: its intent, or None to let the model label it.
            requests: ``(task, target_length)`` pairs.

        Returns:
            The intent and one ``(task, prompt)`` per request, in request order. Word counts
            are not enforced; the achieved length is measured downstream.
        """
        reqs = _check_requests(query, intent, requests)
        context = None
        if self.grounder is not None:
            context = ground_query(self.grounder, query, reqs[0][0], self.grounding_k)
        body = {"model": self.model, "temperature": self.temperature,
                "messages": self.messages(query, intent, reqs, context)}
        for attempt in range(self.max_retries + 1):
            reply, problem, retry_after = await self._attempt(body, query, intent, reqs)
            if reply is not None:
                return reply
            if attempt < self.max_retries:
                wait = self.backoff_s * 2**attempt
                wait = min(self.MAX_BACKOFF_S, wait + self._jitter.uniform(0, wait))
                if retry_after is not None:
                    wait = min(retry_after, self.MAX_RETRY_AFTER_S)
                log.info("teacher attempt %d for %r failed (%s); retrying in %.2fs",
                         attempt + 1, query, problem, wait)
                await asyncio.sleep(wait)
        raise TeacherError(
            f"teacher {self.name} at {self.url} failed for query {query!r} after "
            f"{self.max_retries + 1} attempts; last problem: {problem}")

    async def _attempt(
        self, body: dict[str, Any], query: str, intent: str | None,
        requests: list[tuple[str, int]],
    ) -> tuple[TeacherReply | None, str, float | None]:
        """One POST: ``(reply, "", None)``, or ``(None, problem, retry_after_s)`` when worth
        retrying. A 4xx other than 429 cannot get better by retrying and raises at once."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            resp = await self._client.post(self.url, json=body, headers=headers,
                                           timeout=self.timeout_s)
        except httpx.TimeoutException:
            return None, f"no reply within {self.timeout_s}s", None
        except httpx.TransportError as e:
            return None, f"connection failed: {type(e).__name__}: {e}", None
        status = resp.status_code
        if status == 429 or status >= 500:
            return None, f"HTTP {status}: {resp.text[:200]!r}", _retry_after(resp)
        if not 200 <= status < 300:
            raise TeacherError(f"teacher {self.url} refused the request for query {query!r}: "
                               f"HTTP {status}: {resp.text[:200]!r}")
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return None, f"malformed reply: no choices[0].message.content ({e!r})", None
        try:
            return _parse_content(content, intent, requests), "", None
        except _Malformed as e:
            return None, f"malformed reply: {e}", None

    async def aclose(self) -> None:
        """Close the HTTP client if this teacher made it."""
        if self._owns_client:
            await self._client.aclose()
