"""How the agent speaks to its model: raw code completion, or one chat turn for instruct models.

What the agent exchanges and checks always has one canonical form, the *body*
that follows a problem's prompt (a text package's answers, the program run in
the sandbox, the reference solutions). Only what the model itself reads and
writes depends on the dialect:

- ``raw``: the model continues the prompt; its continuation is the body.
  Models without a chat template (the embedded ones) speak it.
- ``chat``: the model gets the prompt as one user turn (the evaluation's
  prompt, :func:`knexa_node.learn.evaluate.build_prompt`) and answers with a
  code block holding the whole function. The body is cut out of that answer
  (:func:`answer_body`), and a body to learn is put back in that shape
  (:func:`chat_answer`). An instruct model asked to continue a bare prompt
  mostly writes prose (SmolLM2-135M-Instruct: 0/64 embedded problems raw,
  14/48 in chat), so without this a pretrained teacher teaches nothing.
"""

from __future__ import annotations

import ast
import textwrap

from transformers import PreTrainedTokenizerBase

from knexa_node.learn.evaluate import CODE_FENCE, build_prompt, extract_completion, resolve_format
from knexa_node.learn.problems import Problem

RAW, CHAT = "raw", "chat"
pick_dialect = resolve_format  # "auto": chat when the tokenizer has a template; EvalError for a bad name


def model_prompt(tokenizer: PreTrainedTokenizerBase, problem: Problem, dialect: str) -> str:
    return problem.prompt if dialect == RAW else build_prompt(tokenizer, problem, CHAT)


def chat_answer(problem: Problem, body: str) -> str:
    """The shape a chat model answers in: the whole function in one code block."""
    return f"{CODE_FENCE}python\n{problem.prompt}{body.rstrip()}\n{CODE_FENCE}"


def model_answer(problem: Problem, body: str, dialect: str) -> str:
    return body if dialect == RAW else chat_answer(problem, body)


def function_body(code: str, entry_point: str) -> str | None:
    """The statements of ``entry_point`` when ``code`` is that one function and nothing else, else None.

    Anything beside it (imports, helpers) would be lost in a body, so such code stays whole.
    """
    source = textwrap.dedent(code)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef) or tree.body[0].name != entry_point:
        return None
    statements = tree.body[0].body
    first = statements[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        statements = statements[1:]  # the docstring is already in the prompt
    if not statements:
        return None
    lines = source.splitlines()
    start, end = statements[0].lineno - 1, statements[-1].end_lineno or statements[-1].lineno
    return textwrap.indent(textwrap.dedent("\n".join(lines[start:end])), "    ") + "\n"


def answer_body(text: str, problem: Problem, dialect: str) -> str:
    """The canonical body of what the model wrote (raw: as is)."""
    if dialect == RAW:
        return text
    code = extract_completion(text, problem, CHAT)
    body = function_body(code, problem.entry_point)
    # Anything else (helpers, imports, a broken block) stays whole: it still runs after the prompt.
    return body if body is not None else code
