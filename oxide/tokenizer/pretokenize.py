"""Pre-tokenizers of byte-level BPE vocabularies: ``tokenizer.ggml.pre`` -> how the text is cut into
words before the merges run, as llama.cpp does it (``llm_tokenizer_bpe`` and ``unicode_regex_split``).

Each pre-tokenizer is a list of regular expressions applied one after the other: every expression
cuts each piece left by the previous one into its matches and the text between them (both kept).

llama.cpp does not give these patterns to a Unicode-aware regex engine. It matches them with
``std::regex`` on a *collapsed* copy of the text, and its hand-written splitters for the GPT-2,
Llama-3, Qwen2 and Qwen3.5 patterns reproduce that same behaviour; this module does the same:

* Every non-ASCII code point is replaced by one stand-in character for its class: whitespace
  (Unicode's White_Space set) -> ``\\x0b``; otherwise by general category: N -> ``\\xd1``,
  L -> ``\\xd2``, P -> ``\\xd3``, M -> ``\\xd4``, S -> ``\\xd5``, anything else (C, unassigned) ->
  ``\\xd0``. ASCII is kept.
* In the pattern, ``\\p{X}`` becomes that stand-in plus the ASCII members of the category
  (``\\p{L}`` -> ``[\\xd2A-Za-z]``). Consequences reproduced on purpose: ``\\p{Lu}``, ``\\p{Ll}``,
  ``\\p{Lt}``, ``\\p{Lm}`` and ``\\p{Lo}`` all mean "any letter" (a non-ASCII letter is both upper- and
  lower-case), and ``\\s`` / ``\\d`` / ``\\S`` keep their ASCII meaning (``re.ASCII``): a non-ASCII
  space matches ``\\s`` only through its stand-in, and ``\\d`` is ``[0-9]``.
* Patterns without a category are matched on the text itself, except that non-ASCII whitespace
  is replaced by ``\\x0b`` (so a class such as ``[　-。]`` does not match U+3000, which ``\\s`` does).
* The categories are Unicode 15.1's, the version of llama.cpp's tables (``unicode-data.cpp``), not
  the running Python's: :data:`_CLASS_RUNS` holds them (run-length coded, from the Unicode 15.1
  database; ``tests/test_tokenizer_bpe.py`` checks it against llama.cpp's table code point by code
  point).
* ``$`` means end of the piece (ECMAScript), i.e. ``\\Z``. llama.cpp's GPT-2 splitter also takes a
  whitespace run its pattern leaves unmatched (``\\s+(?!\\S)`` alone cannot match one space before a
  word character), so the GPT-2 pattern here ends with ``|\\s+``.

The table :data:`PRE_TOKENIZERS` maps every ``tokenizer.ggml.pre`` value llama.cpp knows to its
patterns and flags, except the few llama.cpp splits with custom code of its own (``kimi-k2``,
``afmoe``, ``tiny_aya``, ``cohere2moe``): those raise :class:`TokenizerError`.
"""

from __future__ import annotations

import base64
import re
import unicodedata
import zlib
from dataclasses import dataclass
from functools import cache
from itertools import accumulate

import numpy as np

from ..errors import TokenizerError

# --- Unicode classes ------------------------------------------------------------------------------

# Unicode 15.1 code point classes, base85(zlib(runs)): each run is one class byte (0 other, 1 N,
# 2 L, 3 P, 4 M, 5 S, 6 White_Space) then its length as a little-endian base-128 varint; the runs
# cover U+0000..U+10FFFF in order. Made with unicodedata2 15.1.0: White_Space code points are class
# 6, the others take the first letter of unicodedata2.category(); unassigned ones (Cn) are class 0.
_CLASS_RUNS = (
    "c-oCvTZmp)6<%xYz0NuR`R_CT+>*}BpXp@MWHOoDlWMH7v5^p|f|wE?6tOB^z=DFHFH(wqs1>E)LmvuW=z}2CmrD8+L=n6|9<=x*"
    "LGS`f@hSA74}RY|XD+E)eAsi&zt7%lugkZ-wf0D-aG5DICD&A7WUZ5VN@fRQPF?Y)&6^a3%7KFKj$zi!s%JH<Q|wgbQz1}o0duPu"
    "zfPX5=L2&ujRMuj`6>KTGcn6ps*)RVmW035CKw;Vis!H)m-aH}HiT;mJDRZ1u`+KZ&DfQ#9V(R_lnj|BW18Vq%5pbhKYniJIT)C6"
    "sM@D^ZZ3rf6qv!<j4xVS3S9;~4eM6&LA>3}UFbEy*F(8ul$-Dya<FzD`xLW^V>P>28baHpobX1yyW+M8TMFsq%8unlXnx4f$LbmC"
    "U^TSI$<Sz&>46F-(l_&XFT*3rGEWPQp{vkDSPP4xGgc(dK|5HhMdQm%{V1)7HG9%*cR-?0<J?FT#9vCB#1l(}R*(xxQiq(5H1XLl"
    "$6Ku`$VoA9whYZ0eF7kedM=vp|6$pF8M~HAiE*D@M2!~Eqd`Xje^6S+(^|w>ymLNT4;DGBp+-40Dl((j_eva4t6EDIFh;wlYrDS8"
    "adPal9ZRGHtV`;V3GV$8>icZiFQsVw+)Ch^N)OK7@#IkgZf_5>19rpbTDF$Y25uVP&A_t7HV)LRjCkenE#p{8fm4i`AU!*od0vUk"
    "f~Ru@?UCAYc-LQ!vDm)Xv9=RZy_us{lm;J9p;t=7AOUFQg-(zwx-$~fhW=QGE)!;=dG12OI&upLb?E0vD$jBLW}X;zDXhT899fX4"
    "sZmfr_n39S9vNXHbn(z@6JGzFMbNEHist=j`#khtzA+IWZr`sETB)NGxN+n)f^!421(VeNnQ5Jk3(_4?bR9uXu&T5f#Ij?v*lKvr"
    "ASylUH}Q-2vw2D`AYEGI9K6Oj6sa3gr56jk2}z(qTg#0_SEaU9d?iwQjFC`CZ7UIht{n#s4nR&<lCRl9u!`Ba3>4*MVr}=7lAMT{"
    "RXGKhZRatxPVjH(b?$fvTGPKPxgXqiJP)Ko5Z5!@0F`TI4CdD%y#pOLaehh_m<0~VbBGV{7wAZ#_ifFW?R(ZZE*P25s&)C!SjF5q"
    "W_YlDldGi%hY`(q>pSzSnTLi2I5I63CID9gx>6sbhjKI0z&bdMMG02(iCum8<&X?B2HDP;J7#rzo_o<&nr1Kuy7->m@h$R9&u|;g"
    "&i*El=gZjjmdcWMWlk^o<2vtu&uO45ehOb!Q|&LLH1F@l(kUkHu>?(F%IEAaKzQI7+B0?2{kXkI{zFC%GTEXN@O*~>G;L%36dBW#"
    "H9vqOZc5KzN9FZVQ>p0(=z|3?qmv5&7l!a$R%M8}K@xBVQte}j=ywEG?c+>D@O^DlUzaW<jeM19?kieB*3hSTKZ56Nv)gC<vOWJ3"
    "0Mjo(?Gq6HJS5tPRYoR28Y*{Y%~}Pnud-SIhm|i_2S<Mv<1&ujW1B_PHuAX!rhsV26G$yQBR|fj49uCG&NIMg<Pd6O5t$XdiBlf{"
    "iy3zI1@+vPg?zD{2Z`Cpd|(LJi_}=_!L9=+&J(Mafk~<h-Z0MT;A=9EMP_Pb<|0kBZgzSTyXwGqGxlP)3D*sX9s4qwwUu7jkDdS_"
    "EMWSSJoBi%!8G~2Y+y?d3V9qsi1u6h)qTbIi$0c-{R3I<BY4j2ydZnPy*>D8l<1F9dJtXApy6SO<||PLih34>;Q#C5Ko~cX^m}G8"
    "4U@AGDy8q#xd(v&p3Szp4KX*6HTyaMj>4>4Sl`iyeXP-jIg?Rk+qV$Vrz0|Ozz{KGFE&;3=LC6NDRW{Y(-kY!pB2McnOu(9OD%QA"
    "B*#N&=FUc_yP?Bg!*KuaEA}%o^E_fzA%5T&I~G;)u`rHKKHl~R%*O?utQBxzsIse4X-7`BraJOt9(@KA=KzdVxs3cJ{h6Xq&=b~F"
    "YOG}KYODBi^ejL#B$bIQx~wcJ%bE~BBo>g1I3Z{y^gIvgCA2l@FpCo_)b$eR?`bI?wrg_1&PX4lRJa1Qr-D;nHeGGZisH@|>N=pi"
    "44|{+ozGq9<ucD=1yLI|2VoP^4OX4YLmZrSC1{)u=|K4{G{x{`ViNXkiR~UBmT=^NjF8yUT1bB|lUg)noy-H+nj`gDP8dXR5_U{b"
    "v}U61?WLw*s64W-7B>+CT_D2SD0v>|<^S0dYTFv^w1hiNoHJR4jSZMso>Q1NgYO>QO?178$qE#mkPc}8{iisSvN~zO*zB%h!8ls@"
    "ZWPhJ%%U;r2T`-Ep2s!9@(^C@1>=@-3n+pkRi3oVI*Wv^+WxR=RbGrfjH=~^OAx9g9SFM`YmbBiW#cj!au9!Odx$e|XBBrB#Vz9m"
    "@|>*a2+K7fqn3M3%Xc`M>?%Ihy3B@w?Lvm%5VLE$zT1EzDH=kS{xS}$BD0Ei#WZ{S)tg3NUNv+$?9a-U2}x0FjgwO!3vRHh*EwI7"
    "KJ<UFl+Wmwgqn2i7b?G<*e9{MZ?9A`ijH9@KVG$8Ww~|5ZlM>pC^Ny(ACjgcqUy}B8lfoJ9r7j!8mZYSD~*{$uxI5Jhr<_u>QCEs"
    "CK=Sb05#DnA~~&fW*62B?9FZX@bwPJq$7WOEI_y8lph){B`V8pTMrat>9>+RGh<)CF<`K0e^4U4$+5fZ`2;jX3i(&$lHY@3egt1H"
    "p>QR5xXKkSmZh(tQGJih`J=?3d<}Wf<M1aC`XzZ*?V~vT1I=x#xlcq-twFNdYWTjkMXlQ3540)c?cI-azvsp!U~#FvSHIH}fYa0d"
    "jhruls7^;0KFHC9gO?fnq1>qu6k_5J%?)H6N!7vvE_p-_!Ld&n$Q~dngPfZi3Yr6OiHwmDs5F9$yxd9PIR5ynhq8IMa;W{1#NL7I"
    "qxOEnQF4O>`EH@_M%Mwqp+tO8x7dNm&zsE$TLIcKc-;zZI?RGn?&~<y+t$B*?0nn7MBXQlvd6GEwH_bKS(L$Vo1+Q$ClO23KMaj="
    "7y#}2_f;-37h(y3gY^U4b6!;cBX3+|6hs!quj2g^Qh3wh594_eJreNmC~uA&z|O}VvF-T)Ke&nFPDC}XFxQCZc!B?Fxgdw(y>C`_"
    "7k8nly*7m}{zSu`-U6t9`YxdSjVwQywU@H|xof}KfL(W|a_6<p{4bU7yw&|Th03k("
)

# Stand-in characters of the collapsed text, indexed by class.
_STAND_IN = (0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0x0B)
_CATEGORY_CLASS = {"N": 1, "L": 2, "P": 3, "M": 4, "S": 5}
# Non-ASCII White_Space code points (the ASCII ones are \t \n \v \f \r and space).
_NON_ASCII_SPACES = (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
_SHADOW_SPACES = {cp: "\x0b" for cp in _NON_ASCII_SPACES}


@cache
def _collapse_table() -> np.ndarray:
    """(0x110000,) uint8: code point -> the character standing for it in the collapsed text."""
    data = zlib.decompress(base64.b85decode("".join(_CLASS_RUNS)))
    classes = np.empty(0x110000, dtype=np.uint8)
    pos = i = 0
    while i < len(data):
        cls, length, shift = data[i], 0, 0
        i += 1
        while True:
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        classes[pos:pos + length] = cls
        pos += length
    if pos != 0x110000:
        raise AssertionError(f"Unicode class table covers {pos:#x} code points, not 0x110000")
    table = np.asarray(_STAND_IN, dtype=np.uint8)[classes]
    table[:128] = np.arange(128, dtype=np.uint8)
    return table


def collapse(text: str) -> str:
    """``text`` with every non-ASCII code point replaced by the stand-in of its class (same length)."""
    if text.isascii():
        return text
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return _collapse_table()[codes].tobytes().decode("latin-1")


def shadow(text: str) -> str:
    """``text`` with non-ASCII whitespace replaced by ``\\x0b`` (same length)."""
    return text if text.isascii() else text.translate(_SHADOW_SPACES)


def _ascii_members(category: str) -> str:
    """The ASCII characters of a general category (the same in every Unicode version), escaped for use
    inside ``[...]``."""
    return "".join(re.escape(c) for c in map(chr, range(128)) if unicodedata.category(c)[0] == category)


@cache
def _category_members(name: str) -> str:
    """Inside-brackets text matching ``\\p{name}`` in the collapsed text (llama.cpp's categories)."""
    major = "L" if name in ("Lu", "Ll", "Lt", "Lm", "Lo") else name
    if major not in _CATEGORY_CLASS:
        raise ValueError(f"unsupported Unicode category \\p{{{name}}}")
    return f"\\x{_STAND_IN[_CATEGORY_CLASS[major]]:02x}" + _ascii_members(major)


_CATEGORY = re.compile(r"\\p\{(\w+)\}")


def translate(pattern: str) -> tuple[str, bool]:
    """llama.cpp's pattern -> (Python ``re`` pattern, whether it runs on the collapsed text).

    ``\\p{X}`` becomes its collapsed class, ``$`` becomes ``\\Z`` and capturing groups become
    non-capturing (so that ``findall`` returns whole matches).
    """
    collapsed = _CATEGORY.search(pattern) is not None
    out: list[str] = []
    inside = False  # within [...]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            m = _CATEGORY.match(pattern, i)
            if m:
                members = _category_members(m.group(1))
                out.append(members if inside else f"[{members}]")
                i = m.end()
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if inside:
            if c == "]":
                inside = False
            out.append(c)
        elif c == "[":
            inside = True
            out.append(c)
        elif c == "(" and not pattern.startswith("?", i + 1):
            out.append("(?:")
        elif c == "$":
            out.append(r"\Z")
        else:
            out.append(c)
        i += 1
    return "".join(out), collapsed


class PreTokenizer:
    """Cuts text into words with a list of llama.cpp patterns (see the module docstring)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self._stages: list[tuple[re.Pattern[str], bool]] = []
        for pattern in patterns:
            python, collapsed = translate(pattern)
            self._stages.append((re.compile(python, re.ASCII), collapsed))

    def split(self, text: str) -> list[str]:
        """The words of ``text`` (non-empty, in order; their concatenation is ``text``)."""
        if not text:
            return []
        views: dict[bool, str] = {}

        def view(collapsed: bool) -> str:
            if collapsed not in views:
                views[collapsed] = collapse(text) if collapsed else shadow(text)
            return views[collapsed]

        pattern, collapsed = self._stages[0]
        first = view(collapsed)
        pieces = pattern.findall(first)
        if sum(map(len, pieces)) == len(text):  # no text between matches: the matches are the words
            if len(self._stages) == 1:
                if first is text:
                    return [p for p in pieces if p]
                ends = list(accumulate(map(len, pieces)))
                return [text[a:b] for a, b in zip([0] + ends, ends) if a < b]
            ends = list(accumulate(map(len, pieces)))
            spans = [(a, b) for a, b in zip([0] + ends, ends) if a < b]
        else:
            spans = self._cut(pattern, first, [(0, len(text))])
        for pattern, collapsed in self._stages[1:]:
            spans = self._cut(pattern, view(collapsed), spans)
        return [text[a:b] for a, b in spans]

    @staticmethod
    def _cut(pattern: re.Pattern[str], view: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Each span cut into the matches of ``pattern`` and the text between them (empty ones dropped:
        an empty word yields no tokens)."""
        out: list[tuple[int, int]] = []
        append = out.append
        for start, end in spans:
            pos = start
            for m in pattern.finditer(view, start, end):
                a, b = m.span()
                if a > pos:
                    append((pos, a))
                if b > a:
                    append((a, b))
                pos = b
            if pos < end:
                append((pos, end))
        return out


# --- the patterns ---------------------------------------------------------------------------------

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
# GPT-2's pattern as llama.cpp lists it, plus the "\s+" its splitter applies (see the docstring).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_ASCII_PUNCT_WORD = r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
_CJK_KANA = r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_BLOOM = r" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
_NEWLINES = r"[^\n]+|[\n]+"
_CASED_WORDS = (  # GPT-4o's words: optional lead, upper-case run then lower-case run (or the reverse)
    r"[^\r\n\p{{L}}\p{{N}}]?((?=[{0}])([^a-z]))*((?=[{0}])([^A-Z]))+{1}"
    r"|[^\r\n\p{{L}}\p{{N}}]?((?=[{0}])([^a-z]))+((?=[{0}])([^A-Z]))*{1}"
)
_TAIL_SLASH = r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"

PATTERNS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "jais2": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
              r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",),
    "deepseek-llm": (
        r"[\r\n]",
        (r"\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
         r"\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
         r"\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
         r"\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
         r"\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
         r"\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102"
         r"\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
         r"\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
         r"\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
         r"\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
         r"\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
         r"\U0001e900-\U0001e943]+"),
        r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
        r"\s+$",
        r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
        r"\p{N}+",
    ),
    "deepseek3": (
        r"\p{N}{1,3}", _CJK_KANA,
        _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "spark2_5": (
        r"\p{N}{1,3}", _CJK_KANA,
        _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
        r"\p{N}",
    ),
    "youtu": (
        r"[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c"
        r"\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|" + _CJK_KANA,
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?"
        r"|\p{N}" + _TAIL_SLASH,
    ),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "starcoder": (r"\p{N}", _GPT2),
    "qwen2": (_QWEN2,),
    "qwen35": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+",),
    "bloom": (_BLOOM,),
    "viking": (_BLOOM, r"\p{N}"),
    "tekken": (_CASED_WORDS.format(r"\p{L}", "") + r"|\p{N}" + _TAIL_SLASH,),
    "chameleon": (r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )", r"\p{N}",
                  r"[\p{P}!-/:-@\[-`{-~]", _GPT2),
    "gpt4o": (_CASED_WORDS.format(r"\p{L}", _CONTRACTIONS + "?") + r"|\p{N}{1,3}" + _TAIL_SLASH,),
    "granite-emb-multi": (_CASED_WORDS.format(r"\p{L}\p{M}", _CONTRACTIONS + "?") + r"|\p{N}{1,3}" + _TAIL_SLASH,),
    "superbpe": (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),
    "bailingmoe": ((r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"),),
    "seed-coder": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
                   r"|\s+(?!\S)|\s+",),
    "ufakzeka": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "laguna": (_NEWLINES, _QWEN2),
    "exaone-moe": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
    "minicpm5": (r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "newlines": (_NEWLINES,),
}


@dataclass(frozen=True)
class PreSpec:
    """Everything llama.cpp derives from one ``tokenizer.ggml.pre`` value.

    ``patterns``: key of :data:`PATTERNS`; ``ignore_merges``: a word that is a token is taken whole;
    ``add_bos``: default of ``tokenizer.ggml.add_bos_token``; ``clean_spaces``: decoding removes the
    space before ``?!.,`` and around apostrophes; ``byte_encode``: words go through GPT-2's
    byte-to-character map (else raw UTF-8 with ``<0xXX>`` byte tokens); ``escape_whitespace``: spaces
    become ``▁`` before splitting; ``newline_tokens``: a word of newlines that is a token is taken
    whole, and BOS is always added (Gemma 4); ``default_bos``: whether BOS defaults to id 11.
    """

    patterns: str
    ignore_merges: bool = False
    add_bos: bool = False
    clean_spaces: bool = True
    byte_encode: bool = True
    escape_whitespace: bool = False
    newline_tokens: bool = False
    default_bos: bool = True


def _names(spec: PreSpec, *names: str) -> dict[str, PreSpec]:
    return dict.fromkeys(names, spec)


# tokenizer.ggml.pre -> PreSpec, as llama.cpp's llama_vocab::load maps them.
PRE_TOKENIZERS: dict[str, PreSpec] = {
    **_names(PreSpec("default"), "default"),
    **_names(PreSpec("minicpm5", ignore_merges=True), "minicpm5"),
    **_names(PreSpec("llama3", ignore_merges=True, add_bos=True), "llama3", "llama-v3", "llama-bpe", "falcon3",
             "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
    **_names(PreSpec("deepseek-llm", clean_spaces=False), "deepseek-llm"),
    **_names(PreSpec("deepseek-coder", clean_spaces=False), "deepseek-coder"),
    **_names(PreSpec("deepseek3", clean_spaces=False), "deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"),
    **_names(PreSpec("spark2_5", clean_spaces=False), "spark2_5"),
    **_names(PreSpec("youtu", clean_spaces=False, ignore_merges=True), "youtu"),
    **_names(PreSpec("falcon"), "falcon"),
    **_names(PreSpec("gpt2"), "mpt", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
             "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "olmo", "jais",
             "exaone4"),
    **_names(PreSpec("gpt2", clean_spaces=False), "trillion", "granite-docling"),
    **_names(PreSpec("starcoder"), "starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"),
    **_names(PreSpec("starcoder", clean_spaces=False), "command-r", "smollm"),
    **_names(PreSpec("jais2"), "jais-2"),
    **_names(PreSpec("newlines", byte_encode=False, escape_whitespace=True, newline_tokens=True),
             "gemma4", "granite-embed-multi-311m"),
    **_names(PreSpec("newlines", byte_encode=False, escape_whitespace=True, clean_spaces=False), "sarvam-moe"),
    **_names(PreSpec("qwen2", clean_spaces=False), "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan",
             "solar-open", "grok-2"),
    **_names(PreSpec("qwen2"), "stablelm2", "megrez"),
    **_names(PreSpec("qwen35", clean_spaces=False), "qwen35"),
    **_names(PreSpec("llama3"), "dbrx", "smaug-bpe"),
    **_names(PreSpec("llama3", default_bos=False), "chatglm-bpe"),
    **_names(PreSpec("llama3", default_bos=False, ignore_merges=True), "glm4", "glm5"),
    **_names(PreSpec("bloom", clean_spaces=False), "poro-chat"),
    **_names(PreSpec("bloom"), "bloom", "gpt3-finnish"),
    **_names(PreSpec("viking", clean_spaces=False), "viking"),
    **_names(PreSpec("tekken", clean_spaces=False, ignore_merges=True, add_bos=True), "tekken"),
    **_names(PreSpec("exaone-moe"), "exaone-moe"),
    **_names(PreSpec("chameleon", add_bos=True, clean_spaces=False), "chameleon"),
    **_names(PreSpec("gpt4o", clean_spaces=False), "gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"),
    **_names(PreSpec("granite-emb-multi", clean_spaces=False, ignore_merges=True), "granite-embed-multi-97m"),
    **_names(PreSpec("superbpe", clean_spaces=False), "superbpe"),
    **_names(PreSpec("bailingmoe", clean_spaces=False), "bailingmoe", "bailingmoe2", "llada-moe"),
    **_names(PreSpec("seed-coder", clean_spaces=False), "seed-coder"),
    **_names(PreSpec("ufakzeka", clean_spaces=False), "ufakzeka"),
    **_names(PreSpec("laguna", clean_spaces=False), "laguna"),
}
# Known to llama.cpp but split by custom code there that these patterns do not reproduce.
# ("whitespace" belongs to llama.cpp's "whitespace" tokenizer model, not to "gpt2".)
UNSUPPORTED = ("kimi-k2", "afmoe", "tiny_aya", "cohere2moe")


def pre_spec(name: str) -> PreSpec:
    """The :class:`PreSpec` of a ``tokenizer.ggml.pre`` value; :class:`TokenizerError` if unknown."""
    spec = PRE_TOKENIZERS.get(name)
    if spec is None:
        why = ("llama.cpp splits it with custom code that oxide does not reproduce" if name in UNSUPPORTED
               else "it is not a pre-tokenizer llama.cpp knows")
        raise TokenizerError(
            f"GGUF metadata key 'tokenizer.ggml.pre' is {name!r}, which is not supported ({why}); supported "
            f"values: {', '.join(sorted(PRE_TOKENIZERS))}. Convert the model with one of these pre-tokenizers."
        )
    return spec


@cache
def pre_tokenizer(patterns: str) -> PreTokenizer:
    """The compiled :class:`PreTokenizer` of a :data:`PATTERNS` entry (shared by all vocabularies)."""
    return PreTokenizer(PATTERNS[patterns])
