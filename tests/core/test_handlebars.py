"""Handlebars as KumoMTA renders it (handlebars-rust 6 with recursive lookup and string helpers).

Each expected output is what handlebars-rust's documentation, tests and source say (and
where they agree, handlebars.js's documentation), not what this module happens to print.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimta.core.handlebars import (
    HandlebarsBudgetError,
    HandlebarsError,
    HandlebarsRenderError,
    HandlebarsSyntaxError,
    Limits,
    compile_template,
    escape_html,
    format_float,
)


def render(source: str, data=None, name: str | None = None, **limits) -> str:
    return compile_template(source, name, limits=Limits(**limits)).render({} if data is None else data)


# --- expressions and escaping ------------------------------------------------------------


@pytest.mark.parametrize("source, data, out", [
    ("Hello {{name}}!", {"name": "World"}, "Hello World!"),
    ("{{ name }}", {"name": "spaced"}, "spaced"),
    ("[{{missing}}]", {}, "[]"),
    ("[{{nothing}}]", {"nothing": None}, "[]"),
    ("{{t}} {{f}}", {"t": True, "f": False}, "true false"),
    ("{{i}} {{n}} {{x}} {{big}} {{small}}", {"i": 3, "n": -7, "x": 1.0, "big": 1e21, "small": 1.5e-7},
     "3 -7 1.0 1e+21 1.5e-7"),
    ("{{xs}}", {"xs": [1, "a", [2, 3], {"k": 1}]}, "[1, a, [2, 3], [object]]"),
    ("{{o}}", {"o": {"a": 1}}, "[object]"),
    ("{{this}}", "top", "top"),
])
def test_values_render_as_handlebars_rust_renders_json(source, data, out):
    assert render(source, data) == out


def test_html_escaping_only_in_templates_that_escape():
    data = {"v": "<a href=\"x\">Tom & 'Jerry'</a> `=`"}
    escaped = "&lt;a href&#x3D;&quot;x&quot;&gt;Tom &amp; &#x27;Jerry&#x27;&lt;/a&gt; &#x60;&#x3D;&#x60;"
    assert render("{{v}}", data, "body.html") == escaped
    assert render("{{{v}}}|{{&v}}|{{~{v}~}}", data, "body.html") == "|".join([data["v"]] * 3)
    assert render("{{v}}", data, "text_body.txt") == data["v"]
    assert render("{{v}}", data) == data["v"]
    assert escape_html("&<>\"'`=") == "&amp;&lt;&gt;&quot;&#x27;&#x60;&#x3D;"


def test_after_a_triple_stash_escaping_is_on_as_in_handlebars_rust():
    # handlebars-rust turns escaping back on after {{{ }}} even in a non-escaping template
    assert render("{{v}} {{{v}}} {{v}}", {"v": "<"}, "text_body.txt") == "< < &lt;"


# --- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source, out", [
    ("{{a.b}} {{a/b}} {{this.a.b}} {{./a.b}}", "1 1 1 1"),
    ("{{xs.[0]}} {{xs.0}} {{xs.[1].k}}", "x x y"),
    ("{{[odd key]}} {{a.[b]}}", "odd 1"),
    ("{{#with a}}{{b}} {{../top}} {{@root.top}}{{/with}}", "1 T T"),
    ("{{#each xs}}{{@index}}:{{this}}{{#if @first}}(first){{/if}}{{#if @last}}(last){{/if}} {{/each}}",
     "0:x(first) 1:[object](last) "),
])
def test_paths(source, out):
    data = {"a": {"b": 1}, "xs": ["x", {"k": "y"}], "odd key": "odd", "top": "T"}
    assert render(source, data) == out


def test_recursive_lookup_finds_names_of_enclosing_scopes():
    """KumoMTA's own test: inside each, a name the item lacks comes from the outer data."""
    data = {"children": [{"inner": "inner"}], "outer": "outer"}
    out = render("{{#each children}}outer={{{outer}}} inner={{{inner}}}{{/each}}", data, "something.html")
    assert out == "outer=outer inner=inner"


def test_block_params_and_object_iteration_in_key_order():
    data = {"xs": ["a", "b"], "o": {"b": 2, "a": 1}}
    assert render("{{#each xs as |x i|}}{{i}}={{x}} {{/each}}", data) == "0=a 1=b "
    assert render("{{#each o}}{{@key}}={{this}}@{{@index}} {{/each}}", data) == "a=1@0 b=2@1 "
    assert render("{{#each o as |v k|}}{{k}}:{{v}};{{/each}}", data) == "a:1;b:2;"
    assert render("{{#each xs}}{{#each ../o}}{{@../index}}{{@key}} {{/each}}{{/each}}", data) == "0a 0b 1a 1b "


def test_an_array_indexed_by_a_name_is_an_error():
    with pytest.raises(HandlebarsRenderError, match="Cannot access array/vector with string index, k"):
        render("{{xs.k}}", {"xs": [1]})


# --- block helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [
    (True, True), (False, False), (None, False), (0, False), (0.0, False), (1, True), (-1.5, True),
    ("", False), ("0", True), ([], False), ([0], True), ({}, False), ({"a": 0}, True),
])
def test_truthiness(value, shown):
    assert render("{{#if v}}yes{{else}}no{{/if}}", {"v": value}) == ("yes" if shown else "no")
    assert render("{{#unless v}}yes{{else}}no{{/unless}}", {"v": value}) == ("no" if shown else "yes")


def test_include_zero():
    assert render("{{#if n includeZero=true}}shown{{/if}}", {"n": 0}) == "shown"
    assert render("{{#if n includeZero=false}}shown{{/if}}", {"n": 0}) == ""


def test_else_chains_and_inverse_tags():
    source = "{{#if (eq n 1)}}one{{else if (gt n 1)}}many{{else}}none{{/if}}"
    assert [render(source, {"n": n}) for n in (1, 5, 0)] == ["one", "many", "none"]
    assert render("{{#if a}}A{{^}}B{{/if}}", {}) == "B"
    assert render("{{#each xs}}x{{else}}empty{{/each}}", {"xs": []}) == "empty"
    assert render("{{#each xs}}x{{else}}not a list{{/each}}", {"xs": "abc"}) == "not a list"
    assert render("{{#with p}}{{name}}{{else}}nobody{{/with}}", {"p": None}) == "nobody"
    assert render("{{#with p as |q|}}{{q.name}}{{/with}}", {"p": {"name": "Q"}}) == "Q"


def test_inverse_sections_are_not_handlebars_rust_syntax():
    with pytest.raises(HandlebarsSyntaxError):
        compile_template("{{^x}}none{{/x}}")


def test_a_section_on_a_value_is_a_missing_helper():
    with pytest.raises(HandlebarsRenderError, match="Helper not found person"):
        render("{{#person}}{{name}}{{/person}}", {"person": {"name": "x"}})


# --- the other helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("source, out", [
    ("{{eq 1 1}} {{eq 1 1.0}} {{eq 'a' \"a\"}} {{ne 1 2}} {{eq missing null}}", "true false true true true"),
    ("{{gt 2 1}} {{gte 1 1.0}} {{lt 'a' 'b'}} {{lte 3 2}} {{gt 10 '9'}} {{gt 'x' 1}}", "true true true false true false"),
    ("{{and 1 'x' true}} {{and 1 0}} {{or null 0 4}} {{or [] {}}} {{not 0}} {{not 'a'}}", "true false true false true false"),
    ("{{len xs}} {{len o}} {{len 'héllo'}} {{len 5}}", "3 1 6 0"),
    ("{{lookup xs 1}} {{lookup o 'k'}} {{lookup o 'nope'}}|", "b v |"),
    ("{{#each xs}}{{lookup ../ys @index}}{{/each}}", "123"),
    ("{{#eq a 1}}yes{{else}}no{{/eq}}", "yes"),
    ("[{{log 'something' level='debug'}}]", "[]"),
])
def test_builtin_helpers(source, out):
    data = {"xs": ["a", "b", "c"], "ys": [1, 2, 3], "o": {"k": "v"}, "a": 1}
    assert render(source, data) == out


@pytest.mark.parametrize("helper, text, out", [
    # handlebars-rust's own string_helpers tests
    ("lowerCamelCase", "lower camel case", "lowerCamelCase"),
    ("lowerCamelCase", "lower-camel-case", "lowerCamelCase"),
    ("upperCamelCase", "upper_camel_case", "UpperCamelCase"),
    ("snakeCase", "snake-case", "snake_case"),
    ("kebabCase", "kebab_case", "kebab-case"),
    ("shoutySnakeCase", "shouty snake-case", "SHOUTY_SNAKE_CASE"),
    ("shoutyKebabCase", "shouty_kebab_case", "SHOUTY-KEBAB-CASE"),
    ("titleCase", "title case", "Title Case"),
    ("trainCase", "train case", "Train-Case"),
    # heck's documented word boundaries
    ("snakeCase", "XMLHttpRequest", "xml_http_request"),
    ("titleCase", "fred", "Fred"),
])
def test_string_helpers(helper, text, out):
    assert render(f"{{{{{helper} v}}}}", {"v": text}) == out


def test_string_helpers_need_a_string():
    with pytest.raises(HandlebarsRenderError, match="snake_case param with name 0 type mismatch for string"):
        render("{{snakeCase 1}}")


def test_subexpressions_and_literals():
    assert render("{{#if (and (gt n 1) (lt n 10))}}in{{/if}}", {"n": 5}) == "in"
    assert render("{{lookup (lookup o 'inner') 'k'}}", {"o": {"inner": {"k": "deep"}}}) == "deep"
    assert render("{{titleCase (lookup names 0)}}", {"names": ["ann lee"]}) == "Ann Lee"
    assert render("{{eq 'it\\'s' \"it's\"}} {{eq [1, 2] xs}}", {"xs": [1, 2]}) == "true true"


def test_unknown_helper_is_the_error_kumomta_gives():
    """kumo-template's test-handlebars.lua: SparkPost's ``name or 'Fred'`` is not Handlebars."""
    with pytest.raises(HandlebarsRenderError) as caught:
        compile_template("{{ name or 'Fred' }}", "test_name_or_fred").render({"name": "John"})
    assert str(caught.value) == 'Error rendering "test_name_or_fred" line 1, col 1: Helper not found name'


def test_helpers_check_their_parameters():
    with pytest.raises(HandlebarsRenderError, match="if param at index 0 required"):
        render("{{#if}}x{{/if}}")
    with pytest.raises(HandlebarsRenderError, match="Invalid logging level: loud"):
        render("{{log 1 level='loud'}}")
    with pytest.raises(HandlebarsRenderError) as caught:
        render("line one\n  {{#each xs}}{{nope 1}}{{/each}}", {"xs": [1]})
    assert (caught.value.line, caught.value.column) == (2, 15)


# --- whitespace, comments, raw blocks, escapes -----------------------------------------------------


@pytest.mark.parametrize("source, out", [
    ("a {{~ v ~}} b", "aVb"),
    ("a\n  {{~v}}  \nb", "aV  \nb"),
    ("{{#if t}}\nyes\n{{else}}\nno\n{{/if}}\nend", "yes\nend"),
    ("<ul>\n  {{#each xs}}\n  <li>{{this}}</li>\n  {{/each}}\n</ul>", "<ul>\n  <li>1</li>\n  <li>2</li>\n</ul>"),
    ("x {{! a comment }}y{{!-- a }} long one --}}z", "x yz"),
    ("a\n{{! standalone }}\nb", "a\nb"),
    ("\\{{v}} \\\\{{v}}", "{{v}} \\V"),
    ("{{{{raw}}}}{{v}} {{#if}}{{{{/raw}}}}", "{{v}} {{#if}}"),
])
def test_whitespace_control_and_literal_text(source, out):
    assert render(source, {"v": "V", "t": True, "xs": [1, 2]}) == out


def test_kumomta_amp_raw_block_case():
    source = ("<body>\r\nHello in AMP, {{ name }}!\r\n{{{{raw}}}}\r\nDon't expand in here {{ name }}\r\n"
              "{{{{/raw}}}}\r\n</body>\r\n")
    assert render(source, {"name": "James Smythe"}, "amp_html_body.html") == (
        "<body>\r\nHello in AMP, James Smythe!\r\nDon't expand in here {{ name }}\r\n</body>\r\n")


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, line, column", [
    ("Hello {{name}}, your code is {{code", 1, 36),
    ("ok\n{{#if a}}\nx", 3, 2),
    ("{{#if a}}x{{/each}}", 1, 11),
    ("{{else}}", 1, 1),
    ("x\n  {{> partial}}", 2, 3),
    ("{{#* inline \"x\"}}{{/inline}}", 1, 1),
    ("{{foo 01}}", 1, 7),
])
def test_syntax_errors_carry_line_and_column(source, line, column):
    with pytest.raises(HandlebarsSyntaxError) as caught:
        compile_template(source)
    assert (caught.value.line, caught.value.column) == (line, column)


def test_partials_and_decorators_say_they_are_unsupported():
    with pytest.raises(HandlebarsSyntaxError, match="partials are not supported"):
        compile_template("{{> footer}}")
    with pytest.raises(HandlebarsSyntaxError, match="decorators are not supported"):
        compile_template("{{* deco}}")


# --- budgets -----------------------------------------------------------------------------------------


def test_budgets_stop_a_blow_up():
    loops = "{{#each xs}}" * 5 + "x" + "{{/each}}" * 5
    with pytest.raises(HandlebarsBudgetError, match="loops more than"):
        render(loops, {"xs": list(range(50))}, max_iterations=100_000)
    with pytest.raises(HandlebarsBudgetError, match="more than 1000 characters"):
        render("{{#each xs}}{{../big}}{{/each}}", {"xs": list(range(100)), "big": "y" * 100}, max_chars=1000)
    with pytest.raises(HandlebarsSyntaxError, match="nested deeper than 10"):
        compile_template("{{#if a}}" * 11 + "{{/if}}" * 11, limits=Limits(max_depth=10))
    with pytest.raises(HandlebarsSyntaxError, match="nested deeper than 10"):
        compile_template("{{not " + "(not " * 11 + "1" + ")" * 11 + "}}", limits=Limits(max_depth=10))
    with pytest.raises(HandlebarsBudgetError, match="steps"):
        render("{{#each xs}}{{#each ../xs}}{{/each}}{{/each}}", {"xs": list(range(300))}, max_steps=10_000)


def test_a_caller_check_can_stop_a_render():
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 2:
            raise HandlebarsBudgetError("out of time")

    template = compile_template("{{#each xs}}{{#each ../xs}}x{{/each}}{{/each}}")
    with pytest.raises(HandlebarsBudgetError, match="out of time"):
        template.render({"xs": list(range(1000))}, check=check)


def test_a_template_parses_once_and_renders_per_recipient():
    template = compile_template("Hi {{name}}", "text_body.txt")
    assert [template.render({"name": n}) for n in ("A", "B")] == ["Hi A", "Hi B"]


def test_float_formatting_is_serde_jsons():
    # zmij 1.0.23 (serde_json's formatter in KumoMTA's Cargo.lock): its tests and fixed-notation range
    assert [format_float(f) for f in (1.0, 0.5, 1e15, 1e16, 1e-5, 1e-6, 123.456, -2.5e-10, 0.0, -0.0,
                                      6.62607015e-34, 3.439070283483335e+35, 5e-324)] == [
        "1.0", "0.5", "1000000000000000.0", "1e+16", "0.00001", "1e-6", "123.456", "-2.5e-10", "0.0", "-0.0",
        "6.62607015e-34", "3.439070283483335e+35", "5e-324"]


# --- any input -----------------------------------------------------------------------------------------

_pieces = st.sampled_from(["{{", "}}", "{{{", "}}}", "{{{{", "}}}}", "#", "/", "if", "each", "else", "with",
                           "~", "!", "--", "^", "&", "as", "|", "x", "xs", "(", ")", "[", "]", "'", "\"", ".",
                           "../", "@index", "@root", "this", " ", "\n", "\\", "=", "1", "true", "lookup", "eq",
                           "raw", ">", "*"])
_sources = st.one_of(st.text(max_size=60), st.lists(_pieces, max_size=30).map("".join))


@settings(max_examples=400, deadline=None)
@given(_sources, st.booleans())
def test_any_input_renders_or_raises_the_template_error(source, html):
    data = {"x": "<x>", "xs": [1, {"x": 2}, [3]], "this": {"a": None}}
    try:
        template = compile_template(source, "t.html" if html else "t.txt", limits=Limits(max_steps=50_000))
        out = template.render(data)
    except HandlebarsError as exc:
        assert str(exc)
    else:
        assert isinstance(out, str)


# --- cases from handlebars-rust's own test suite (its expected outputs) -------------------------


@pytest.mark.parametrize("source, data, out", [
    ("{{#each this}}{{@first}}|{{@last}}|{{@index}}:{{this}}|{{/each}}", [1, 2, 3],
     "true|false|0:1|false|false|1:2|false|true|2:3|"),
    ("{{#each this}}{{@first}}|{{@last}}|{{@key}}:{{this}}|{{@index}}|{{/each}}",
     {"ftp": 21, "gopher": 70, "http": 80},
     "true|false|ftp:21|0|false|false|gopher:70|1|false|true|http:80|2|"),
    ("{{#each a.c}} d={{d}} b={{../a.a}} {{/each}}", {"a": {"a": 99, "c": [{"d": 100}, {"d": 200}]}},
     " d=100 b=99  d=200 b=99 "),
    ("{{#each a}}{{#each b}}{{d}}:{{../c}}{{/each}}{{/each}}", {"a": [{"b": [{"d": 100}], "c": 200}]}, "100:200"),
    ("{{#each b}}{{#if ../a}}{{#each this}}{{this}}{{/each}}{{/if}}{{/each}}",
     {"a": [{"b": True}], "b": [[1, 2, 3], [4, 5]]}, "12345"),
    ("{{#each this.[0]}}{{this}}{{/each}}", [[1, 2, 3]], "123"),
    ("{{#each this as |v k|}}{{#with k as |inner_k|}}{{inner_k}}{{/with}}:{{v}}|{{/each}}",
     {"ftp": 21, "http": 80}, "ftp:21|http:80|"),
    ("{{#each this as |v k|}}{{#with v as |inner_v|}}{{k}}:{{inner_v}}{{/with}}|{{/each}}",
     {"ftp": 21, "http": 80}, "ftp:21|http:80|"),
    ("{{#each a.b}}{{#each c}}{{../../d}}{{/each}}{{/each}}", {"a": {"b": [{"c": [1]}]}, "d": 1}, "1"),
    ("{{#each variant}}{{#each ../typearg}}{{#if @first}}template<{{/if}}{{this}}{{#if @last}}>{{else}},{{/if}}"
     "{{/each}}{{/each}}", {"typearg": ["T"], "variant": ["1", "2"]}, "template<T>template<T>"),
    ("{{#each a}}{{this}}{{/each}} {{b}}", {"a": [1, 2, 3, 4], "b": "good"}, "1234 good"),
    ("{{#each list}}A{{else}}{{foo}}{{/each}}", {"list": [], "foo": "bar"}, "bar"),
    ("{{#each list}}{{#each inner}}{{this}}{{/each}}{{foo}}{{/each}}",
     {"list": [{"inner": [], "foo": 1}, {"inner": [], "foo": 2}]}, "12"),
    ("{{#each this}}each block{{else}}else block{{/each}}", "strings aren't iterable", "else block"),
    ("{{#each this as |b index|}}{{b.value}}{{#each this as |value key|}}:{{key}},{{/each}}{{/each}}",
     [{"value": 11}, {"value": 22}], "11:value,22:value,"),
    ("{{#each classes as |class|}}{{#each class.methods as |method|}}{{class.private}}|{{method.id}};"
     "{{/each}}{{/each}}",
     {"classes": [{"methods": [{"id": 1}, {"id": 2}], "private": False},
                  {"methods": [{"id": 3}, {"id": 4}], "private": True}]},
     "false|1;false|2;true|3;true|4;"),
    ("\n{{#each bar as |x|}}\n{{#each ../foo as |y|}}\n{{../../foo.0}}: {{../x}}\n{{/each}}\n{{/each}}\n",
     {"foo": [42], "bar": [1, 2, 3]}, "\n42: 1\n42: 2\n42: 3\n"),
    ("{{#each a}}{{@root/b}}: {{this}};{{/each}}", {"a": [1, 2, 3, 4], "b": "top"}, "top: 1;top: 2;top: 3;top: 4;"),
    ("{{#if a}}x{{/if}}\ny", {"a": True}, "x\ny"),
    ("{{#if a}}\nx\n{{^}}\ny\n{{/if}}\nz", {"a": False}, "y\nz"),
    ("yes\n  {{#if true}}\n  foo\n  bar\n  {{/if}}\n  baz", {}, "yes\n  foo\n  bar\n  baz"),
    ("  {{#if true}}\n  foo\n  bar\n  {{/if}}\n  baz", {}, "  foo\n  bar\n  baz"),
    ("  {{~ foo ~}}  ", {"foo": "bar"}, "bar"),
    ("  {{{~ foo ~}}}  ", {"foo": "<bar/>"}, "<bar/>"),
    ("hello~     {{~world~}} \n  !{{~#if true}}else{{/if~}}", {"world": "W"}, "hello~W!else"),
    ("{{#if true}}1  {{~ else ~}} 2 {{~/if}}", {}, "1"),
    ("a{{{{raw}}}}{{content}}{{else}}hello{{{{/raw}}}}", {}, "a{{content}}{{else}}hello"),
    ("\\{{hello}}| \\{{hello}}|\\\\{{hello}}", {"hello": "world"}, "{{hello}}| {{hello}}|\\world"),
    ("null: {{null}} --> {{#if null }}true{{else}}false{{/if}}", {"null": True}, "null: true --> false"),
    ("null: {{null}} --> {{#if this.[null]}}true{{else}}false{{/if}}", {"null": True}, "null: true --> true"),
    ("{{#if (gt a b)}}Success{{else}}Failed{{/if}}", {"a": 1, "b": 0}, "Success"),
    ("{{#if (not (gt a c))}}Success{{else}}Failed{{/if}}", {"a": 1, "c": 2}, "Success"),
    ("{{#if (or (gt 3 5) (gt 5 3))}}lorem{{else}}ipsum{{/if}}", {}, "lorem"),
    ("{{#if (and null 4)}}lorem{{else}}ipsum{{/if}}", {}, "ipsum"),
    ("{{#if (or [1] [])}}lorem{{else}}ipsum{{/if}}", {}, "lorem"),
])
def test_handlebars_rust_cases(source, data, out):
    assert render(source, data) == out


def test_handlebars_rust_error_cases():
    with pytest.raises(HandlebarsRenderError, match="Helper not found x"):
        render("{{x[]@this}}", [])
    with pytest.raises(HandlebarsRenderError, match="not param at index 0"):
        render("{{#if (not)}}Success{{else}}Failed{{/if}}")
    with pytest.raises(HandlebarsSyntaxError) as caught:
        compile_template("{{#ifequals name compare=\"hello\"}}\nhello\n\t{{else}}\ngood")
    assert (caught.value.line, caught.value.column) == (4, 5)
    for source in ("{{invalid", "{{{invalid", "{{invalid}", "{{!hello"):
        with pytest.raises(HandlebarsSyntaxError):
            compile_template(source)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20)
_TEMPLATES = [compile_template(t, "t.html") for t in (
    "{{v}}{{{v}}}{{v.a}}{{v.[0]}}{{len v}}{{lookup v 0}}{{lookup v 'a'}}",
    "{{#each v}}{{@index}}{{@key}}{{this}}{{#each this}}{{this}}{{/each}}{{else}}-{{/each}}",
    "{{#if v}}t{{else}}f{{/if}}{{#with v}}{{a}}{{/with}}{{eq v v}}{{gt v 1}}{{lte v '2'}}{{and v w}}{{not v}}",
    "{{titleCase v}}",
    "{{snakeCase (lookup v 0)}}",
)]


@settings(max_examples=300, deadline=None)
@given(_json, _json)
def test_any_data_renders_or_raises_the_template_error(v, w):
    for template in _TEMPLATES:
        try:
            assert isinstance(template.render({"v": v, "w": w}), str)
        except HandlebarsError:
            pass
