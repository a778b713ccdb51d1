"""The toy world: procedurally generated scenes with exact ground truth and a built-in language prior.

A scene is 1-3 distinct objects (a colour x shape "kind", e.g. ``red circle``), each drawn inside
its own cell of a grid whose cells are exactly the vision tower's patches, so one image token sees
one object (a feasibility study found that free placement does not ground in a CPU budget).

The prior is a *partner* structure: every kind has one designated partner kind (different colour
and different shape, so naming the partner is never a near-miss of perception). Scenes are
generated as a chain: the first object is drawn by popularity, and each further object is the
partner of the previous one with probability ``image_partner_prob`` (else any other unused kind,
partner excluded). Captions list objects in chain order, so after ``"a A and a"`` the next object
is the partner with exactly that probability. The text-only corpus uses the same generator with
the stronger ``text_partner_prob``: the language model learns the strong prior from text, the
multimodal data carries a weaker version of it (as web images do with the co-occurrences that
text exaggerates). ``None`` for a probability turns the partner structure off (the no-prior control).

Some objects are *faint* (drawn at low contrast). They stand for the small / occluded objects of
real photos: where visual evidence is weak the caption has to lean on the prior, which is where
MLLMs hallucinate. Everything is deterministic in (config, split, index).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from bpo.config import option
from bpo.errors import BpoError

COLOUR_RGB = {
    "red": (225, 45, 45), "green": (45, 200, 60), "blue": (55, 90, 235), "yellow": (235, 215, 40),
    "purple": (160, 60, 200), "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six")

# Prompt phrasings. Each is space-tokenised text over the closed vocabulary (see tokenizer.py).
DESCRIBE_PROMPTS = (
    "describe the image .",
    "what is in the image ?",
    "list the objects in the image .",
    "what do you see ?",
)
EXIST_TEMPLATE = "is there a {name} in the image ?"
COLOUR_TEMPLATE = "what colour is the {shape} ?"
COUNT_PROMPT = "how many objects are there ?"
POSITION_TEMPLATE = "where is the {name} ?"
TEXT_PROMPTS = ("describe a scene .",)  # text-only chat turns in the language corpus

POPE_SPLITS = ("random", "popular", "adversarial")
# Disjoint scene streams: alignment (train), preference data for bootstrapping (pref), evaluation
# (eval), the early-stopping check (heldout); "text" seeds the text-only corpus.
SCENE_SPLITS = ("train", "pref", "eval", "heldout")


@dataclass
class WorldConfig:
    """What the toy world looks like; every field changes the pretrained model's cache key."""

    seed: int = option(0, help="world seed: partner map, popularity order and all scenes derive from it")
    colours: list[str] = option(default_factory=lambda: ["red", "green", "blue", "yellow"],
                                help=f"object colours (from {', '.join(COLOUR_RGB)})")
    shapes: list[str] = option(default_factory=lambda: ["circle", "square", "triangle", "cross"],
                               help=f"object shapes (from {', '.join(SHAPES)})")
    image_size: int = option(32, help="image side in pixels; a multiple of cell_size")
    cell_size: int = option(8, help="grid cell side in pixels; equals the vision patch size (one object per patch)")
    min_objects: int = option(1, help="fewest objects in a scene")
    max_objects: int = option(3, help="most objects in a scene")
    image_partner_prob: float | None = option(
        0.5, help="P(next object is the previous one's partner) in images; null = no partner structure")
    text_partner_prob: float | None = option(
        0.85, help="the same probability in the text-only corpus (the language prior); null = no prior")
    popularity_skew: float = option(
        0.5, help="object kinds are drawn with weight 1/rank^skew (0 = uniform); defines POPE 'popular'")
    faint_prob: float = option(0.25, help="probability that an object is drawn faint (weak visual evidence)")
    faint_contrast: float = option(0.35, help="contrast of a faint object against the background (1 = full)")
    hidden_prob: float = option(
        0.15, help="probability that an object after the first is hidden: in the ground truth, the captions and the "
        "answers, but not drawn (an occluded object of a real photo's annotations); where perception has nothing to "
        "go on the model must guess, and the text prior makes the partner the likely guess. 0 until 2026-12-01")
    min_scale: float = option(0.7, help="smallest object size as a fraction of its cell")
    pixel_noise: float = option(6.0, help="std of per-pixel sensor noise (0-255 scale)")

    def __post_init__(self):
        bad = [c for c in self.colours if c not in COLOUR_RGB]
        if bad or len(set(self.colours)) != len(self.colours) or len(self.colours) < 3:
            raise BpoError(f"world colours must be >= 3 distinct names from {list(COLOUR_RGB)}, got {self.colours}")
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or len(set(self.shapes)) != len(self.shapes) or len(self.shapes) < 3:
            raise BpoError(f"world shapes must be >= 3 distinct names from {list(SHAPES)}, got {self.shapes}")
        if self.image_size % self.cell_size:
            raise BpoError(f"image_size {self.image_size} must be a multiple of cell_size {self.cell_size}")
        grid = (self.image_size // self.cell_size) ** 2
        if not 1 <= self.min_objects <= self.max_objects <= min(grid, len(COUNT_WORDS) - 1):
            raise BpoError(f"need 1 <= min_objects <= max_objects <= {min(grid, len(COUNT_WORDS) - 1)}")
        if not 0.0 <= self.hidden_prob < 1.0:
            raise BpoError(f"hidden_prob must be in [0, 1), got {self.hidden_prob}")
        for name in ("image_partner_prob", "text_partner_prob"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p <= 1.0:
                raise BpoError(f"{name} must be in [0, 1] or null, got {p}")

    @property
    def grid(self) -> int:
        return self.image_size // self.cell_size


@dataclass(frozen=True)
class Obj:
    """One object: kind (colour + shape), grid cell, size, whether it is faint and whether it is hidden (in the
    ground truth but not drawn)."""

    colour: str
    shape: str
    row: int
    col: int
    scale: float = 1.0
    faint: bool = False
    hidden: bool = False

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Exact ground truth of one image; ``objects`` are in chain (caption) order."""

    id: str
    objects: tuple[Obj, ...]

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def count(self) -> int:
        return len(self.objects)


def caption_of(names: list[str]) -> str:
    """The world's one caption grammar: ``a red circle and a blue square .``"""
    return " and ".join(f"a {n}" for n in names) + " ."


def parse_caption(text: str, kinds: set[str] | list[str] | None = None) -> list[str] | None:
    """Object names of a caption in the world grammar, in order; ``None`` if it does not parse.

    Accepts ``"a K1 and a K2 ... ."`` with optional missing space before the full stop and
    surrounding whitespace; ``kinds`` (if given) restricts the object names to the world's.
    Anything else (a repeated ``and``, a bare colour, trailing words) is unparsable: that is what
    the parse rate measures.
    """
    words = text.replace(".", " . ").split()
    if len(words) < 4 or words[-1] != "." or words[0] != "a":
        return None
    body = words[:-1]
    names: list[str] = []
    i = 0
    while True:
        if i + 3 > len(body) or body[i] != "a":
            return None
        name = f"{body[i + 1]} {body[i + 2]}"
        if kinds is not None and name not in kinds:
            return None
        names.append(name)
        i += 3
        if i == len(body):
            return names
        if body[i] != "and":
            return None
        i += 1


def _rng(*key) -> np.random.Generator:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class World:
    """Scene generation, rendering and question making for one :class:`WorldConfig`."""

    def __init__(self, cfg: WorldConfig | None = None):
        self.cfg = cfg or WorldConfig()
        self.kinds = [f"{c} {s}" for c in self.cfg.colours for s in self.cfg.shapes]
        rng = _rng(self.cfg.seed, "structure")
        self.partner = self._partner_map(rng)
        order = list(rng.permutation(len(self.kinds)))
        weights = np.empty(len(self.kinds))
        for rank, k in enumerate(order):
            weights[k] = 1.0 / (rank + 1) ** self.cfg.popularity_skew
        self.popularity = weights / weights.sum()
        # Most to least popular (ties broken by kind order): POPE "popular" negatives.
        self.by_popularity = [self.kinds[k] for k in sorted(range(len(self.kinds)), key=lambda k: -weights[k])]

    # -- structure ---------------------------------------------------------------------------------
    def _partner_map(self, rng: np.random.Generator) -> dict[str, str]:
        """A random cyclic order of all kinds with consecutive kinds differing in colour and shape.

        One long cycle means no kind is its own partner and chains of 3 never revisit a kind.
        """
        n = len(self.kinds)
        for _ in range(10_000):
            perm = [self.kinds[i] for i in rng.permutation(n)]
            ok = all(
                a.split()[0] != b.split()[0] and a.split()[1] != b.split()[1]
                for a, b in zip(perm, perm[1:] + perm[:1])
            )
            if ok:
                return {a: b for a, b in zip(perm, perm[1:] + perm[:1])}
        raise BpoError("could not build a partner cycle; use at least 3 colours and 3 shapes")

    def reverse_partner(self, name: str) -> str:
        return next(k for k, v in self.partner.items() if v == name)

    def _chain(self, rng: np.random.Generator, partner_prob: float | None) -> list[str]:
        cfg = self.cfg
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        names = [self.kinds[int(rng.choice(len(self.kinds), p=self.popularity))]]
        while len(names) < n:
            partner = self.partner[names[-1]]
            if partner_prob is not None and partner not in names and rng.random() < partner_prob:
                names.append(partner)
                continue
            # Partner excluded here so that P(next = partner) is exactly partner_prob.
            banned = set(names) | ({partner} if partner_prob is not None else set())
            idx = [i for i, k in enumerate(self.kinds) if k not in banned]
            w = self.popularity[idx] / self.popularity[idx].sum()
            names.append(self.kinds[idx[int(rng.choice(len(idx), p=w))]])
        return names

    # -- scenes ------------------------------------------------------------------------------------
    def scene(self, split: str, index: int) -> Scene:
        """Scene ``index`` of ``split`` (see ``SCENE_SPLITS``): same inputs, same scene."""
        if split not in SCENE_SPLITS:
            raise BpoError(f"unknown scene split {split!r}; use one of {', '.join(SCENE_SPLITS)}")
        cfg = self.cfg
        rng = _rng(cfg.seed, split, index)
        names = self._chain(rng, cfg.image_partner_prob)
        cells = rng.choice(cfg.grid * cfg.grid, size=len(names), replace=False)
        scene_id = f"{split}-{index:06d}"
        objs = []
        for i, (name, cell) in enumerate(zip(names, cells)):
            colour, shape = name.split()
            # its own stream, so the other draws (and every scene of a world without hidden objects) stay as they were
            hidden = i > 0 and bool(_rng(cfg.seed, "hidden", scene_id, i).random() < cfg.hidden_prob)
            objs.append(Obj(colour, shape, int(cell) // cfg.grid, int(cell) % cfg.grid,
                            scale=round(float(rng.uniform(cfg.min_scale, 1.0)), 3),
                            faint=bool(rng.random() < cfg.faint_prob), hidden=hidden))
        return Scene(id=scene_id, objects=tuple(objs))

    def cell_labels(self, scene: Scene) -> list[int]:
        """Per grid cell in row-major (= image-token) order: 0 if empty (or its object hidden: the pixels show
        nothing there), else 1 + the kind's index."""
        labels = [0] * (self.cfg.grid * self.cfg.grid)
        for o in scene.objects:
            if not o.hidden:
                labels[o.row * self.cfg.grid + o.col] = 1 + self.kinds.index(o.name)
        return labels

    def text_names(self, index: int) -> list[str]:
        """Object names of text-corpus sentence ``index`` (the strong prior; no image)."""
        return self._chain(_rng(self.cfg.seed, "text", index), self.cfg.text_partner_prob)

    def text_sentence(self, index: int) -> str:
        return caption_of(self.text_names(index))

    def text_chat(self, index: int) -> tuple[str, str]:
        """(prompt, answer) of corpus item ``index`` written as a text-only chat turn."""
        return TEXT_PROMPTS[index % len(TEXT_PROMPTS)], self.text_sentence(index)

    # -- rendering ---------------------------------------------------------------------------------
    def render(self, scene: Scene) -> np.ndarray:
        """``uint8 [H, W, 3]`` image; the sensor noise is seeded by the scene id."""
        cfg = self.cfg
        rng = _rng(cfg.seed, "pixels", scene.id)
        bg = np.array([40.0, 40.0, 40.0])
        img = np.broadcast_to(bg, (cfg.image_size, cfg.image_size, 3)).copy()
        for o in scene.objects:
            if o.hidden:
                continue
            colour = np.array(COLOUR_RGB[o.colour], dtype=float)
            if o.faint:
                colour = bg + cfg.faint_contrast * (colour - bg)
            mask = shape_mask(o.shape, cfg.cell_size, o.scale)
            y, x = o.row * cfg.cell_size, o.col * cfg.cell_size
            cell = img[y:y + cfg.cell_size, x:x + cfg.cell_size]
            cell[mask] = colour
        img += rng.normal(0.0, cfg.pixel_noise, img.shape)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def image(self, scene: Scene):
        from PIL import Image

        return Image.fromarray(self.render(scene), mode="RGB")

    # -- language ----------------------------------------------------------------------------------
    def caption(self, scene: Scene) -> str:
        return caption_of(scene.names)

    def position_words(self, o: Obj) -> str:
        half = self.cfg.grid / 2
        vert = "top" if o.row < half else "bottom"
        horiz = "left" if o.col < half else "right"
        return f"{vert} {horiz}"

    def pope_negatives(self, scene: Scene, split: str, k: int, index: int) -> list[str]:
        """``k`` absent kinds for POPE ``split``.

        random: uniform over absent kinds; popular: the most popular absent kinds; adversarial: the
        absent partners of present objects first (what the prior predicts), then kinds whose partner
        is present (they co-occur too), then the most popular.
        """
        absent = [n for n in self.kinds if n not in scene.names]
        if split == "random":
            rng = _rng(self.cfg.seed, "pope", scene.id, index)
            return [absent[i] for i in rng.choice(len(absent), size=min(k, len(absent)), replace=False)]
        if split == "popular":
            return [n for n in self.by_popularity if n in absent][:k]
        if split == "adversarial":
            ranked = [self.partner[n] for n in scene.names] + [self.reverse_partner(n) for n in scene.names]
            ranked += self.by_popularity
            out: list[str] = []
            for n in ranked:
                if n in absent and n not in out:
                    out.append(n)
            return out[:k]
        raise BpoError(f"unknown POPE split {split!r}; use one of {', '.join(POPE_SPLITS)}")

    def pope_questions(self, scene: Scene, split: str) -> list[tuple[str, str, str]]:
        """(question, answer, object) pairs: every present object (yes) and as many negatives (no)."""
        negs = self.pope_negatives(scene, split, scene.count, 0)
        out = [(EXIST_TEMPLATE.format(name=n), "yes", n) for n in scene.names]
        out += [(EXIST_TEMPLATE.format(name=n), "no", n) for n in negs]
        return out

    def qa(self, scene: Scene, index: int, exist_share: float = 0.2) -> tuple[str, str, str]:
        """One (task, question, answer) for instruction data: describe / exist / colour / count / position.

        ``exist_share`` is the probability of an existence question; the other tasks keep their
        relative shares (60 : 7 : 6 : 7). Existence questions here use *random* negatives only, so
        training never shows the model the adversarial (partner) case that POPE-adversarial and the
        pull measure.
        """
        rng = _rng(self.cfg.seed, "qa", scene.id, index)
        rest = (1.0 - exist_share) / 0.8  # exactly 1.0 at the historical 0.2: the same draws as before
        mix = [.6 * rest, exist_share, .07 * rest, .06 * rest, .07 * rest]
        task = ("describe", "exist", "colour", "count", "position")[int(rng.choice(5, p=mix))]
        if task == "exist":
            if rng.random() < 0.5:
                name = scene.names[int(rng.integers(scene.count))]
                return task, EXIST_TEMPLATE.format(name=name), "yes"
            name = self.pope_negatives(scene, "random", 1, index)[0]
            return task, EXIST_TEMPLATE.format(name=name), "no"
        if task == "colour":
            shapes = [o.shape for o in scene.objects]
            unique = [o for o in scene.objects if shapes.count(o.shape) == 1]
            if unique:
                o = unique[int(rng.integers(len(unique)))]
                return task, COLOUR_TEMPLATE.format(shape=o.shape), o.colour
        if task == "count":
            return task, COUNT_PROMPT, COUNT_WORDS[scene.count]
        if task == "position":
            o = scene.objects[int(rng.integers(scene.count))]
            return task, POSITION_TEMPLATE.format(name=o.name), self.position_words(o)
        prompt = DESCRIBE_PROMPTS[int(rng.integers(len(DESCRIBE_PROMPTS)))]
        return "describe", prompt, self.caption(scene)

    def vocabulary(self) -> list[str]:
        """Every word any caption, prompt or answer of this world can contain (sorted)."""
        texts = [caption_of(self.kinds), *DESCRIBE_PROMPTS, COUNT_PROMPT, *TEXT_PROMPTS,
                 EXIST_TEMPLATE.format(name=self.kinds[0]), COLOUR_TEMPLATE.format(shape=self.cfg.shapes[0]),
                 POSITION_TEMPLATE.format(name=self.kinds[0]), "yes no top bottom left right",
                 " ".join(COUNT_WORDS), " ".join(self.cfg.colours), " ".join(self.cfg.shapes)]
        return sorted({w for t in texts for w in t.split()})


def shape_mask(shape: str, cell: int, scale: float) -> np.ndarray:
    """Boolean ``[cell, cell]`` mask of a centred shape whose half-extent is ``scale * cell / 2``."""
    c = (cell - 1) / 2.0
    y, x = np.mgrid[0:cell, 0:cell].astype(float)
    dy, dx = y - c, x - c
    r = scale * cell / 2.0
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.75 * r
    if shape == "triangle":
        top, bottom = -r, 0.8 * r
        frac = (dy - top) / (bottom - top)
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= frac * r + 0.25)
    if shape == "cross":
        arm = max(0.5, 0.3 * r)
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise BpoError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
