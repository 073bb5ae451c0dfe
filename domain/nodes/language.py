"""Pure-Python text statistics: tokenizing, stop words, TF-IDF keywords, language, summaries."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOP_WORDS: dict[str, frozenset[str]] = {
    "en": _set(
        "a about above after again all also an and any are as at be because been before being below between both"
        " but by can could did do does doing down during each few for from further had has have having he her here"
        " hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or"
        " other our ours out over own same she should so some such than that the their them then there these they"
        " this those through to too under until up very was we were what when where which while who whom why will"
        " with would you your"
    ),
    "de": _set(
        "aber alle als also am an auch auf aus bei bin bis bist da damit dann das dass dem den der des die dies doch"
        " dort du durch ein eine einem einen einer eines er es für hat hatte ich ihr im in ist ja jede kann kein mit"
        " muss nach nicht noch nur oder sehr sein sich sie sind so über um und uns unter viel vom von vor war was"
        " weil wenn wer wie wir wird wo zu zum zur"
    ),
    "fr": _set(
        "à au aux avec ce ces cette dans de des du elle en est et être il ils je la le les leur lui mais me même mes"
        " moi mon ne nous on ou par pas pour qu que qui sa se ses son sont sur ta te tes toi ton tu un une vos"
        " votre vous été était sont aussi comme"
    ),
    "es": _set(
        "a al algo como con de del el ella ellos en entre era es esta este esto fue ha hay la las le les lo los más"
        " me mi muy no nos o para pero por que se ser si sin sobre su sus también te tiene todo un una uno y ya"
        " están son"
    ),
    "it": _set(
        "a ad al alla anche che chi ci come con da dal dalla dei del della di e è ed gli ha hanno i il in io la le"
        " lei lo loro ma mi nel nella no noi non o per più questo quella quello se si sono su sua suo tra un una"
        " uno"
    ),
    "nl": _set(
        "aan al als bij dat de den der des deze die dit door een en er had heb heeft het hij hoe ik in is je kan"
        " maar me men met mij na naar niet nog nu of om onder ons ook op over te tot u uit van veel voor was wat"
        " we wel werd wie wij worden zal ze zich zij zijn zo"
    ),
    "pt": _set(
        "a ao aos as até com como da das de dela dele do dos e é ela ele eles em entre era essa esse esta este eu"
        " foi há isso já mais mas me mesmo meu muito na não nas nem no nos o os ou para pela pelo por quando que"
        " se sem ser seu sua são também te tem um uma você"
    ),
}
ALL_STOP_WORDS = frozenset[str]().union(*STOP_WORDS.values())


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def keywords(documents: list[str], top_k: int, min_length: int) -> list[dict[str, object]]:
    """TF-IDF over ``documents``: a term scores by its summed tf-idf; ties break alphabetically."""
    docs = [[w for w in words(d) if len(w) >= min_length and w not in ALL_STOP_WORDS] for d in documents]
    docs = [d for d in docs if d]
    if not docs:
        return []
    frequency = Counter(term for doc in docs for term in set(doc))
    scores: dict[str, float] = defaultdict(float)
    for doc in docs:
        counts = Counter(doc)
        for term, count in counts.items():
            # smoothed idf, so a term in every document still counts by its frequency
            scores[term] += (count / len(doc)) * (1.0 + math.log((1 + len(docs)) / (1 + frequency[term])))
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return [{"term": term, "score": round(score, 6)} for term, score in ranked]


def detect_language(text: str) -> tuple[str, float]:
    """(language code, confidence 0..1); ("unknown", 0.0) when no stop word is found."""
    tokens = words(text)[:20_000]
    hits = {lang: sum(1 for t in tokens if t in stop) for lang, stop in STOP_WORDS.items()}
    total = sum(hits.values())
    if total == 0:
        return "unknown", 0.0
    best = max(sorted(hits), key=lambda lang: hits[lang])
    return best, round(hits[best] / total, 4)


def summarize(text: str, count: int) -> str:
    """The ``count`` sentences with the highest mean content-word frequency, in text order."""
    found = sentences(text)
    if len(found) <= count:
        return " ".join(found)
    frequency = Counter(w for w in words(text) if w not in ALL_STOP_WORDS)
    top = float(max(frequency.values(), default=1))

    def score(sentence: str) -> float:
        content = [w for w in words(sentence) if w not in ALL_STOP_WORDS]
        return sum(frequency[w] / top for w in content) / (len(content) or 1)

    chosen = sorted(sorted(range(len(found)), key=lambda i: (-score(found[i]), i))[:count])
    return " ".join(found[i] for i in chosen)
