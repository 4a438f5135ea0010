from codelora.config import CleanConfig
from codelora.data.clean import clean_rows, extract_code, normalize_whitespace, remove_comments, strip_fences


def test_remove_comments_keeps_hash_inside_strings():
    code = 'url = "http://x/#anchor"  # the url\n# a whole-line comment\nprint(\'#not\')\n'
    assert remove_comments(code) == 'url = "http://x/#anchor"\nprint(\'#not\')\n'


def test_prose_and_odd_line_breaks_survive_comment_removal():
    from codelora.data.clean import remove_answer_comments

    assert remove_answer_comments("You can write it in C# or Python") == "You can write it in C# or Python"
    assert remove_answer_comments("Steps:\n# Install\npip install x") == "Steps:\n# Install\npip install x"
    # a form feed inside a string is one line to the tokenizer, two to str.splitlines
    assert remove_comments('s = "a\x0cb"  # c1\nx = 1  # c2\n') == 's = "a\x0cb"\nx = 1\n'
    assert extract_code("```python\n```") == "" and strip_fences("```python\n```") == ""


def test_remove_comments_leaves_untokenizable_code_alone():
    assert remove_comments('x = "unclosed\n') is None


def test_fences_and_code_extraction():
    text = "Sure:\n```python\nprint(1)\n```\nDone."
    assert extract_code(text) == "print(1)"
    assert strip_fences(text) == "Sure:\nprint(1)\nDone."
    assert extract_code("print(2)") == "print(2)"


def test_normalize_whitespace():
    assert normalize_whitespace("\n\tdef f():\r\n\t\treturn 1   \r\n\n") == "    def f():\n        return 1"


def _row(ref, output, instruction="q"):
    return {"instruction": instruction, "input": "", "output": output, "ref": ref}


def test_clean_rows_steps_and_drops():
    rows = [
        _row(1, "```python\nx = 1  # one\n```"),
        _row(2, "```python\nx = 1\n```"),  # a duplicate of row 1 once its comment is gone
        _row(3, "```python\n# only a comment\n```"),
        _row(4, "print('a')\t \r\n"),
    ]
    out, drops = clean_rows(rows, CleanConfig(strip_fences=True, remove_comments=True))
    assert [r["output"] for r in out] == ["x = 1", "print('a')"]
    assert drops == {"duplicate": [2], "empty after cleaning": [3]}
    # every step off: nothing changes and nothing is dropped
    off = CleanConfig(strip_fences=False, remove_comments=False, normalize_whitespace=False, drop_duplicates=False)
    same, none = clean_rows(rows, off)
    assert same == rows and none == {}
