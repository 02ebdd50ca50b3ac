"""Incremental detokenization and stop strings on their own."""
from __future__ import annotations

from shared.engine.text import IncrementalDetokenizer, StopStrings


def test_detokenizer_releases_whole_characters(byte_tokenizer):
    text = "a😀b日\n"
    ids = byte_tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(byte_tokenizer)
    deltas = [detok.push(t) for t in ids]
    assert deltas == ["a", "", "", "", "😀", "b", "", "", "日", "\n"]
    assert detok.flush() == ""


def test_detokenizer_flushes_a_cut_character(byte_tokenizer):
    detok = IncrementalDetokenizer(byte_tokenizer)
    assert [detok.push(t) for t in "😀".encode()[:2]] == ["", ""]
    assert detok.flush() == "\ufffd"
    assert detok.push(ord("x")) == "x"  # the window restarts


def test_stop_strings_hold_back_possible_prefixes():
    stops = StopStrings(["aab", "</s>"])
    assert stops.feed("xa") == ("x", None)
    assert stops.feed("a") == ("", None)  # "aa" could still become "aab"
    assert stops.feed("a") == ("a", None)  # "aaa": the first "a" is safe, "aa" is held
    assert stops.feed("b!") == ("", "aab")  # held "aa" + "b!": the match starts at the held text
    stops = StopStrings(["aab"])
    assert stops.feed("aaaab") == ("aa", "aab")
    stops = StopStrings(["</s>"])
    assert stops.feed("ok </") == ("ok ", None)
    assert stops.flush() == "</"


def test_no_stop_strings_pass_everything():
    assert StopStrings([]).feed("abc") == ("abc", None)


def test_earliest_match_wins():
    assert StopStrings(["cd", "bcde"]).feed("abcdef") == ("a", "bcde")
