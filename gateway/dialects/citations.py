"""Web search sources, from wherever each vendor returns them, as the client's top-level `citations`.

`citations` is the aggregator dialect's response extension: a list of source URLs, on the reply, or
on the last chunk of a stream whether or not the client asked for usage. Where each vendor puts its
sources (one place per vendor, so a correction is a one-line change):

  OpenAI (search models)    choices[].message.annotations[] / delta.annotations[]: url_citation.url
  Qwen (DashScope)          search_info.search_results[].url (output.search_info in DashScope's protocol)
  Zhipu GLM                 web_search[].link (top level, with `search_result: true`)
  Anthropic                 web_search_tool_result blocks: content[].url; text blocks: citations[].url
  aggregators               citations[]: URLs, or objects with `url`

An upstream that already answers with `citations` (another aggregator) has them kept, first.
"""

from __future__ import annotations

from typing import Any

from gateway.types import JSON

# The most sources one reply carries to the client: a vendor returning hundreds is cut, not relayed.
MAX_CITATIONS = 100


class Citations:
    """The ordered, de-duplicated source URLs of one reply, gathered as its parts come."""

    __slots__ = ("_seen", "sent", "urls")

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._seen: set[str] = set()
        self.sent = 0  # how many of `urls` the client has been sent (streams)

    def add(self, url: Any) -> None:
        """One source: an http(s) URL; anything else a vendor put there is not relayed."""
        if (
            type(url) is str
            and url.startswith(("https://", "http://"))
            and url not in self._seen
            and len(self.urls) < MAX_CITATIONS
        ):
            self._seen.add(url)
            self.urls.append(url)

    def add_all(self, items: Any, field: str = "url", strings: bool = False) -> None:
        """URLs from a list of objects holding the URL under `field` (or of URLs, with `strings`)."""
        if type(items) is not list:
            return
        for item in items:
            if type(item) is dict:
                self.add(item.get(field))
            elif strings:
                self.add(item)

    def from_chat(self, obj: JSON, inner: str) -> None:
        """Sources in an OpenAI-shaped reply (`inner` = "message") or chunk (`inner` = "delta")."""
        if "citations" in obj:
            self.add_all(obj["citations"], strings=True)
        if "web_search" in obj:
            self.add_all(obj["web_search"], "link")
        if "search_info" in obj:
            self.from_search_info(obj["search_info"])
        choices = obj.get("choices")
        if type(choices) is list:
            for choice in choices:
                part = choice.get(inner) if type(choice) is dict else None
                if type(part) is dict and "annotations" in part:
                    self.from_annotations(part["annotations"])

    def from_search_info(self, info: Any) -> None:
        if type(info) is dict:
            self.add_all(info.get("search_results"))

    def from_annotations(self, annotations: Any) -> None:
        if type(annotations) is not list:
            return
        for note in annotations:
            if type(note) is dict and note.get("type") == "url_citation":
                cited = note.get("url_citation")
                self.add(cited.get("url") if type(cited) is dict else note.get("url"))

    def from_anthropic_block(self, block: Any) -> None:
        """A Messages content block: a web search result block, or text carrying citations."""
        if type(block) is not dict:
            return
        kind = block.get("type")
        if kind == "web_search_tool_result":
            self.add_all(block.get("content"))
        elif kind == "text":
            self.add_all(block.get("citations"))

    def pending(self) -> bool:
        """Whether some sources have not reached the client yet."""
        return self.sent < len(self.urls)

    def attach(self, obj: JSON) -> None:
        """Put every source so far on `obj` (the reply, or the chunk that may be the stream's last)."""
        if self.urls:
            obj["citations"] = list(self.urls)
            self.sent = len(self.urls)
        elif "citations" in obj:
            del obj["citations"]  # an upstream's that held no URL: not the list clients are promised
