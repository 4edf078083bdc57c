"""The feature schema of a prepared dataset: what every event token carries, and the id conventions.

The SQL steps (``sql/06_encode.sql``, ``sql/ids.sql``) write these columns and ids; the model
embeds them. Defined in the base layer, so that the data layer and the model both read them without
importing each other (and the data layer never loads torch).
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense ids of items, brands and categories: 0 pads a sequence, 1 stands for every unknown or rare
# value (below --min-item-count); real values start at 2.
PAD = 0
UNKNOWN = 1
FIRST_ID = 2

# event_type_id: 0 is padding.
VIEW, CART, PURCHASE, REMOVE_FROM_CART = 1, 2, 3, 4
EVENT_TYPES = {"view": VIEW, "cart": CART, "purchase": PURCHASE, "remove_from_cart": REMOVE_FROM_CART}
N_EVENT_TYPES = 5

# Sizes of the bucketed features (largest id + 1, 0 = padding).
N_PRICE, N_HOUR, N_WEEKDAY, N_GAP = 32, 25, 8, 28

FEATURES = (
    "item_idx", "brand_idx", "category_idx", "event_type_id", "price_bucket", "hour_id", "weekday_id", "gap_bucket",
)
"""The columns of one event token, in the order the model embeds them."""


@dataclass(frozen=True)
class Vocab:
    """Embedding table sizes: the largest id + 1 (ids 0 and 1 are padding and unknown)."""

    n_items: int
    n_brands: int
    n_categories: int


def per_event_type(view: float = 0.0, cart: float = 0.0, purchase: float = 0.0,
                   remove_from_cart: float = 0.0) -> list[float]:
    """A value for each event_type_id (padding gets 0), to index with an array of type ids."""
    out = [0.0] * N_EVENT_TYPES
    out[VIEW], out[CART], out[PURCHASE], out[REMOVE_FROM_CART] = view, cart, purchase, remove_from_cart
    return out
