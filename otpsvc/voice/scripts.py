"""What a call says, per locale: the built-in words, digits and languages; the scripts are
rendered as templates by :mod:`otpsvc.voice.templates` (these are their defaults).

Digits of a code are written as words ("four, eight, two"), never as numerals: a text-to-speech
engine reads "482913" as a big number, "4, 8" as a decimal in languages with a decimal comma,
and "4." as an ordinal in German (so the German scripts never end a sentence on a key: "die
Taste 9, um abzulehnen"). Words joined by the language's comma keep every digit's own word. Where a
provider takes SSML the pauses are ``<break>`` elements instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class Script:
    intro: str
    again: str
    digits: tuple[str, ...]
    separator: str
    keypress: str
    #: Match mode: key the two digits the screen shows, or 9; the digits are never said.
    match: str
    #: The code by SMS (an escalation ladder's last resort): short, naming the brand; the code
    #: in numerals. {brand}, {code}, {minutes}.
    sms: str = "{brand}: your verification code is {code}. It expires in {minutes} min."


SCRIPTS: dict[str, Script] = {
    "en": Script(
        intro="Your {brand} verification code is",
        again="Again, your code is",
        digits=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
        separator=", ",
        keypress=(
            "Someone asked to sign in to {brand} with this phone number. "
            "If it was you, press 1. If it was not you, press 9."
        ),
        match=(
            "Someone is signing in to {brand} with this phone number. "
            "If it is you, key in the two digits shown on your screen. "
            "If it is not you, press 9."
        ),
    ),
    "fr": Script(
        intro="Votre code de vérification {brand} est",
        again="Je répète, votre code est",
        digits=("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
        separator=", ",
        keypress=(
            "Quelqu'un a demandé à se connecter à {brand} avec ce numéro. "
            "Si c'est vous, tapez 1 pour confirmer. Sinon, tapez 9 pour refuser."
        ),
        match=(
            "Quelqu'un se connecte à {brand} avec ce numéro. "
            "Si c'est vous, tapez les deux chiffres affichés sur votre écran. "
            "Sinon, tapez 9 pour refuser."
        ),
        sms="{brand} : votre code de vérification est {code}. Il expire dans {minutes} min.",
    ),
    "de": Script(
        intro="Ihr {brand} Bestätigungscode lautet",
        again="Ich wiederhole, Ihr Code lautet",
        digits=("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
        separator=", ",
        keypress=(
            "Jemand möchte sich mit dieser Telefonnummer bei {brand} anmelden. "
            "Wenn Sie das waren, drücken Sie die Taste 1, um zu bestätigen. "
            "Wenn nicht, drücken Sie die Taste 9, um abzulehnen."
        ),
        match=(
            "Jemand meldet sich mit dieser Telefonnummer bei {brand} an. "
            "Wenn Sie das sind, tippen Sie die zwei Ziffern ein, die Ihr Bildschirm zeigt. "
            "Wenn nicht, drücken Sie die Taste 9, um abzulehnen."
        ),
        sms="{brand}: Ihr Bestätigungscode lautet {code}. Er gilt {minutes} Min.",
    ),
    "uk": Script(
        intro="Ваш код підтвердження {brand}",
        again="Повторюю, ваш код",
        digits=(
            "нуль",
            "один",
            "два",
            "три",
            "чотири",
            "п'ять",
            "шість",
            "сім",
            "вісім",
            "дев'ять",
        ),
        separator=", ",
        keypress=(
            "Хтось хоче увійти до {brand} з цим номером телефону. "
            "Якщо це ви, натисніть 1, щоб підтвердити. Якщо ні, натисніть 9, щоб відхилити."
        ),
        match=(
            "Хтось входить до {brand} з цим номером телефону. "
            "Якщо це ви, наберіть дві цифри, які показує ваш екран. "
            "Якщо ні, натисніть 9, щоб відхилити."
        ),
        sms="{brand}: ваш код підтвердження {code}. Дійсний {minutes} хв.",
    ),
    "ar": Script(
        intro="رمز التحقق الخاص بك من {brand} هو",
        again="أكرر، رمزك هو",
        digits=("صفر", "واحد", "اثنان", "ثلاثة", "أربعة", "خمسة", "ستة", "سبعة", "ثمانية", "تسعة"),
        separator="، ",
        keypress=(
            "طلب شخص ما تسجيل الدخول إلى {brand} بهذا الرقم. "
            "إذا كنت أنت، اضغط 1. إذا لم تكن أنت، اضغط 9."
        ),
        match=(
            "شخص ما يسجل الدخول إلى {brand} بهذا الرقم. "
            "إذا كنت أنت، أدخل الرقمين الظاهرين على شاشتك. "
            "إذا لم تكن أنت، اضغط 9."
        ),
        sms="{brand}: رمز التحقق الخاص بك هو {code}. صالح لمدة {minutes} دقيقة.",
    ),
    "pt": Script(
        intro="O seu código de verificação {brand} é",
        again="Repito, o seu código é",
        digits=("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove"),
        separator=", ",
        keypress=(
            "Alguém pediu para entrar em {brand} com este número. "
            "Se foi você, pressione 1. Se não foi, pressione 9."
        ),
        match=(
            "Alguém está entrando em {brand} com este número. "
            "Se for você, digite os dois números que aparecem na sua tela. "
            "Se não for você, pressione 9."
        ),
        sms="{brand}: o seu código de verificação é {code}. Expira em {minutes} min.",
    ),
    "es": Script(
        intro="Su código de verificación de {brand} es",
        again="Repito, su código es",
        digits=("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
        separator=", ",
        keypress=(
            "Alguien pidió iniciar sesión en {brand} con este número. "
            "Si fue usted, pulse 1. Si no fue usted, pulse 9."
        ),
        match=(
            "Alguien está iniciando sesión en {brand} con este número. "
            "Si es usted, marque los dos dígitos que aparecen en su pantalla. "
            "Si no es usted, pulse 9."
        ),
        sms="{brand}: su código de verificación es {code}. Caduca en {minutes} min.",
    ),
}
DEFAULT_LOCALE = "en"

#: The BCP-47 tag each script is written in: the language its SSML declares and its voices speak.
LANGUAGE_TAGS: dict[str, str] = {
    "en": "en-US",
    "fr": "fr-FR",
    "de": "de-DE",
    "uk": "uk-UA",
    "ar": "ar-SA",
    "pt": "pt-BR",
    "es": "es-ES",
}

#: The language usually spoken in a country (ISO 3166 alpha-2), for calls without a locale.
REGION_LANGUAGES: dict[str, str] = {
    **dict.fromkeys(["FR", "BE", "LU", "MC", "SN", "CI", "CM", "ML", "BF", "NE", "TG", "BJ"], "fr"),
    **dict.fromkeys(["DE", "AT", "LI"], "de"),
    "UA": "uk",
    **dict.fromkeys(
        ["EG", "SA", "AE", "QA", "KW", "BH", "OM", "JO", "LB", "IQ", "LY", "SD", "YE"], "ar"
    ),
    **dict.fromkeys(["PT", "BR", "AO", "MZ", "CV"], "pt"),
    **dict.fromkeys(
        ["ES", "MX", "AR", "CO", "CL", "PE", "VE", "EC", "GT", "CU", "BO", "DO", "UY", "PY"], "es"
    ),
}

PAUSE_MS = 400
#: What ``escape`` adds for text inside a double-quoted attribute.
QUOTE = {'"': "&quot;"}


def script_for(locale: str) -> Script:
    return SCRIPTS[language_of(locale)]


def choose_locale(requested: str | None, region: str | None, default: str) -> str:
    """The request's locale, else the phone's country's language, else the configured default."""
    if requested and requested.split("-")[0] in SCRIPTS:
        return requested.split("-")[0]
    if region and region in REGION_LANGUAGES:
        return REGION_LANGUAGES[region]
    return default if default in SCRIPTS else DEFAULT_LOCALE


def language_of(locale: str) -> str:
    """The script's own locale (``pt-BR`` -> ``pt``; unknown -> the default)."""
    base = locale.split("-")[0]
    return base if base in SCRIPTS else DEFAULT_LOCALE


def speak(locale: str, body: str, voice: str | None) -> str:
    """An SSML document in the script's language: ``xml:lang`` names it, and ``voice`` (when
    given) selects the voice that reads it, so no engine reads it with a voice of another
    language."""
    tag = LANGUAGE_TAGS[language_of(locale)]
    if voice is not None:
        body = f'<voice name="{escape(voice, QUOTE)}">{body}</voice>'
    return f'<speak xml:lang="{tag}">{body}</speak>'
