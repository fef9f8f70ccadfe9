"""How a chat becomes the text a model reads, the same way when sampling and when training.

Instruct models get their tokenizer's chat template (with `sample.chat_template_kwargs`, e.g.
`enable_thinking`); base models without one get raw text: the messages' contents joined by a
blank line, then a newline where the completion starts (`model.prompt_format`).
"""

from __future__ import annotations


def uses_chat_template(tokenizer, prompt_format: str) -> bool:
    """Whether prompts go through the chat template: `chat`, `raw`, or `auto` (chat where there is one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "chat" and not has_template:
        raise ValueError("model.prompt_format is chat, but the tokenizer has no chat template: set "
                         "model.prompt_format: raw (a base model), or model.tokenizer to one with a template")
    return prompt_format == "chat" or (prompt_format == "auto" and has_template)


def raw_prompt(messages: list[dict]) -> str:
    """A chat as plain text for a base model: the contents, a blank line apart, then a newline."""
    return "\n\n".join(m["content"] for m in messages if m.get("content")) + "\n"


def prompt_ids(tokenizer, messages: list[dict], chat: bool, template_kwargs: dict | None = None) -> list[int]:
    """The token ids a model is given for `messages` (generation prompt included).

    A chat template writes its own special tokens, so none are added to its text; raw text gets
    the tokenizer's usual ones (a BOS token where the model expects one).
    """
    if chat:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **(template_kwargs or {}))
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(raw_prompt(messages), add_special_tokens=True)


def split_thinking(text: str, tags: list[str] | tuple[str, str] | None) -> tuple[str | None, str]:
    """(thinking section, the rest) of a completion, the section verbatim with its tags.

    The rest is what is searched for the final answer: the text after the last closing tag (the
    opening one may have been written by the chat template, not the model). A completion that
    opened a section and never closed it stopped while thinking: the rest is empty, so it has no
    answer. Without tags, or without a section, the whole text is the rest.
    """
    if not tags or not text:
        return None, text
    opening, closing = tags
    end = text.rfind(closing)
    if end >= 0:
        cut = end + len(closing)
        return text[:cut], text[cut:]
    if opening in text:
        return text, ""
    return None, text
