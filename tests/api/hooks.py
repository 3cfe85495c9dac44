"""Schemathesis hooks for Glimpse's OpenAPI documents: how a client writes what JSON Schema
cannot say.

- `glimpse-search-query` and `glimpse-filters` (string formats the documents name): queries in
  Glimpse's query language, generated from its grammar.
- `image/*` bodies and upload form files: real images of every format Glimpse indexes, in random
  sizes and colours.

Loaded with SCHEMATHESIS_HOOKS=hooks and this folder on PYTHONPATH (tests/api/check does).
"""

import io
import random

import schemathesis
from hypothesis import strategies as st
from PIL import Image

WORD = st.from_regex(r"[a-z]{1,12}", fullmatch=True)
PHRASE = st.lists(WORD, min_size=1, max_size=3).map(lambda words: '"' + " ".join(words) + '"')
WORD_OR_PHRASE = st.one_of(WORD, PHRASE)
PHOTO_ID = st.from_regex(r"[0-9a-f]{16}", fullmatch=True)


@st.composite
def _date(draw):
    year = draw(st.integers(1900, 2100))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28))
    return draw(st.sampled_from([f"{year}", f"{year}-{month:02}", f"{year}-{month:02}-{day:02}"]))


@st.composite
def _filters(draw, at_most):
    """Up to `at_most` filters; dates as one `after:`/`before:` or a range in order."""
    chosen = []
    for key in draw(st.lists(st.sampled_from(["album", "camera"]), max_size=at_most, unique=True)):
        chosen.append(f"{key}:{draw(WORD_OR_PHRASE)}")
    dates = draw(st.sampled_from(["none", "after", "before", "range"]))
    if dates in ("after", "before"):
        chosen.append(f"{dates}:{draw(_date())}")
    elif dates == "range":
        start = draw(st.integers(1900, 2050))
        end = draw(st.integers(start + 1, 2100))
        chosen.extend([f"after:{start}", f"before:{end}"])
    return chosen


WEIGHT = st.decimals(min_value="0.1", max_value="100", places=1).map(str)
RANKING_TERM = st.one_of(
    WORD,
    PHRASE,
    WORD_OR_PHRASE.map(lambda t: "-" + t),
    st.tuples(WEIGHT, PHRASE).map(lambda wt: f"{wt[0]}:{wt[1]}"),
    PHOTO_ID.map(lambda i: f"like:{i}"),
)


@st.composite
def _search_query(draw):
    terms = [draw(st.one_of(WORD, PHRASE))]
    terms += draw(st.lists(RANKING_TERM, max_size=6))
    terms += draw(_filters(2))
    random.Random(draw(st.integers(0, 2**16))).shuffle(terms)
    prefix = draw(st.sampled_from(["", "sem: "]))
    return prefix + " ".join(terms)


schemathesis.openapi.format("glimpse-search-query", _search_query())
schemathesis.openapi.format("glimpse-filters", _filters(2).map(" ".join))

PIL_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
}


def _image(pil_format, width, height, colour, seed):
    image = Image.new("RGB", (width, height), colour)
    noise = random.Random(seed)
    for _ in range(min(width * height, 64)):
        xy = (noise.randrange(width), noise.randrange(height))
        image.putpixel(xy, tuple(noise.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, format=pil_format)
    return out.getvalue()


def _images(pil_format):
    return st.builds(
        lambda w, h, c, s: _image(pil_format, w, h, c, s),
        st.integers(1, 64),
        st.integers(1, 64),
        st.tuples(*[st.integers(0, 255)] * 3),
        st.integers(0, 2**32),
    )


for media_type, pil_format in PIL_FORMATS.items():
    schemathesis.openapi.media_type(media_type, _images(pil_format))


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """Keeps every failure but one kind: a query text that schemathesis calls a violation of the
    query language's format and the server parsed as a valid query (2xx).

    Schemathesis takes any string outside a custom format's strategy as violating the format, but
    the language is defined by the server's parser, and most strings ("beach 2024") are valid
    queries. A text that does not parse is a 400 `invalid_query`, and those pass this check."""
    if failure.code != "ST201" or not 200 <= response.status_code < 300:
        return True
    mutations = getattr(getattr(case.meta, "phase", None), "data", None)
    mutations = getattr(mutations, "mutations", None) or []
    query_text = [
        mutation.keywords == ("format",)
        and (mutation.parameter == "q" or tuple(mutation.path)[-1:] == ("query",))
        for mutation in mutations
    ]
    return not (query_text and all(query_text))
