"""Snapshots of the versioned prompt templates: any wording change must be deliberate (a new _vN file)."""

import pytest

from bpo.errors import BpoError
from bpo.safety.llm import render_template

ENTITY_V1 = """\
Find the single most prominent named entity in the user request below.

A named entity is a specific person (PER), organization (ORG), location (LOC), or another proper-named \
thing such as a product, brand, work, event or landmark (MISC). Common nouns and pronouns are not entities. \
If there are several, pick the one the request is mainly about.

Copy the entity exactly as it is written in the request. Answer with one line and nothing else, in this format:
ENTITY: <entity> | TYPE: <PER, ORG, LOC or MISC>
If the request names no entity, answer with exactly:
NONE

Request:
<<<
Is {the} Glimmerstone Tower open?
>>>
"""

REWRITE_V1 = """\
Rewrite a user request so that it refers to a named entity only through an image shown with it.

The request mentions a place, "Glimmerstone Tower". The user now shows a picture of it instead of \
naming it. Rewrite the request so that it refers to it with a phrase like "the place in the image" and \
never writes its name or any other name for it. Keep everything else unchanged: the meaning, the intent, \
the tone, the language and all other details. Do not answer the request, do not comment on it and do not \
add warnings.

Original request:
<<<
Is the Glimmerstone Tower open?
>>>

Draft with the name replaced (may be ungrammatical):
<<<
Is the place in the image open?
>>>

Answer with the rewritten request only.
"""


def test_entity_v1_snapshot():
    # Braces in user text pass through untouched (no str.format).
    assert render_template("entity_v1", text="Is {the} Glimmerstone Tower open?") == ENTITY_V1


def test_rewrite_v1_snapshot():
    assert render_template("rewrite_v1", text="Is the Glimmerstone Tower open?", draft="Is the place in the image open?",
                           entity="Glimmerstone Tower", entity_type="a place",
                           replacement="the place in the image") == REWRITE_V1


def test_missing_fields_and_unknown_templates_are_errors():
    with pytest.raises(BpoError, match="needs draft, entity, entity_type, replacement"):
        render_template("rewrite_v1", text="x")
    with pytest.raises(BpoError, match="unknown prompt template 'entity_v9'"):
        render_template("entity_v9", text="x")

