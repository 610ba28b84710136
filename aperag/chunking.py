"""Token-aware chunking with the embedding model's own tokenizer.

Chunk size and overlap are in model tokens, so a chunk never silently exceeds what the embedder
reads (all-MiniLM-L6-v2 truncates at 256 word pieces).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

_SENTENCE_END = (".", "!", "?", "\n", ";", ":")


@dataclass(frozen=True)
class TextChunk:
    ordinal: int
    text: str
    token_count: int
    start_char: int
    end_char: int


def load_tokenizer() -> Tokenizer:
    from aperag.embedding.minilm import bundled_model_dir

    tokenizer = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def chunk_text(text: str, tokenizer: Tokenizer, chunk_size: int, overlap: int) -> list[TextChunk]:
    if chunk_size <= overlap:
        raise ValueError("chunk_size must be larger than overlap")
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    n = len(offsets)
    if n == 0:
        return []
    chunks: list[TextChunk] = []
    start = 0
    while start < n:
        end = min(start + chunk_size, n)
        if end < n:
            # Prefer to end at a sentence boundary in the last 40% of the window, so chunks hold
            # whole sentences; otherwise cut at the token limit.
            floor = start + max(1, int(chunk_size * 0.6))
            for cut in range(end, floor, -1):
                gap = text[offsets[cut - 1][1] : offsets[cut][0]] if cut < n else ""
                last = text[offsets[cut - 1][0] : offsets[cut - 1][1]]
                if "\n" in gap or last.endswith(_SENTENCE_END):
                    end = cut
                    break
        start_char = offsets[start][0]
        end_char = offsets[end - 1][1]
        chunks.append(
            TextChunk(
                ordinal=len(chunks),
                text=text[start_char:end_char],
                token_count=end - start,
                start_char=start_char,
                end_char=end_char,
            )
        )
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return chunks
