"""Where the shards lie and which keys travel: pure index math, no tensors,
no communication (unit-tested without processes).

The sequence of N = sum(lengths) tokens is cut into consecutive shards, rank
r (in group order) holding global positions [offset_r, offset_r + S_r). With
window_left = W - 1 and window_right keys after self, the queries of shard r
see the global keys

    [offset_r - window_left, offset_r + S_r + window_right)   clipped to [0, N),

so beside its own keys a rank needs a left halo of min(offset_r, W - 1) keys
and a right halo of min(N - offset_r - S_r, window_right) keys. A halo longer
than the neighbouring shard is assembled from as many ranks as it covers.

Extension point (packed sequences): a halo never needs to cross a document
boundary. With cu_seqlens known on every rank, `halo_ranges` would clip the
left halo at the start of the document holding the shard's first token (and
the right one at the end of the last token's document); the pieces, the
exchange and the backward follow from the ranges unchanged.
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

Range = Tuple[int, int]  # [begin, end) in global token positions


@dataclass(frozen=True)
class Piece:
    """One message of the halo exchange: `peer` (a group rank) owns global
    tokens [begin, end); in the forward they travel owner -> user."""
    peer: int
    begin: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class HaloPlan:
    """What one rank sends and receives. `left` / `right`: the pieces of its
    left / right halo in global order (received in the forward, their key
    gradients sent back in the backward). `sends`: the pieces of its own shard
    that other ranks need (sent in the forward; their gradients come back)."""
    rank: int
    offset: int
    length: int
    total: int
    left: Tuple[Piece, ...]
    right: Tuple[Piece, ...]
    sends: Tuple[Piece, ...]

    @property
    def left_len(self) -> int:
        return sum(p.length for p in self.left)

    @property
    def right_len(self) -> int:
        return sum(p.length for p in self.right)


def offsets(lengths: Sequence[int]) -> List[int]:
    out, acc = [], 0
    for n in lengths:
        out.append(acc)
        acc += n
    return out


def halo_ranges(offset: int, length: int, total: int, window_left: int, window_right: int) -> Tuple[Range, Range]:
    """The global key ranges a shard needs beyond its own: (left, right);
    an empty shard needs none."""
    if length == 0:
        return (offset, offset), (offset, offset)
    left = (max(0, offset - window_left), offset)
    end = offset + length
    right = (end, min(total, end + window_right))
    return left, right


def _cut(rng: Range, lengths: Sequence[int], starts: Sequence[int]) -> Tuple[Piece, ...]:
    """rng split at shard boundaries: one piece per owning rank, in order."""
    pieces = []
    for peer, (start, n) in enumerate(zip(starts, lengths)):
        b, e = max(rng[0], start), min(rng[1], start + n)
        if b < e:
            pieces.append(Piece(peer, b, e))
    return tuple(pieces)


def halo_plan(lengths: Sequence[int], rank: int, window_left: int, window_right: int) -> HaloPlan:
    """The exchange of `rank` given every rank's shard length."""
    starts = offsets(lengths)
    total = sum(lengths)

    def ranges_of(r):
        return halo_ranges(starts[r], lengths[r], total, window_left, window_right)

    left, right = (_cut(rng, lengths, starts) for rng in ranges_of(rank))
    own = (starts[rank], starts[rank] + lengths[rank])
    sends = []
    for dst in range(len(lengths)):
        if dst == rank:
            continue
        for rng in ranges_of(dst):  # at most one of the two meets this shard
            b, e = max(rng[0], own[0]), min(rng[1], own[1])
            if b < e:
                sends.append(Piece(dst, b, e))
    return HaloPlan(rank, starts[rank], lengths[rank], total, left, right, tuple(sends))


@dataclass(frozen=True)
class RowBlock:
    """Query rows [row_begin, row_end) of the shard, computed by one call of
    the op over the extended keys [key_begin, key_end) (coordinates of
    left halo + own keys + right halo); `shift` = how far the op's bottom-right
    alignment places each row after its true position, compensated in the
    window: (window_left + shift, window_right - shift)."""
    row_begin: int
    row_end: int
    key_begin: int
    key_end: int
    shift: int


def row_block(row_begin: int, row_end: int, left_len: int, length: int, right_len: int,
              window_left: int, window_right: int) -> RowBlock:
    """The keys rows [row_begin, row_end) see, in extended coordinates (query
    row i sits at extended position left_len + i)."""
    ext = left_len + length + right_len
    key_begin = max(0, left_len + row_begin - window_left)
    key_end = min(ext, left_len + row_end + window_right)
    return RowBlock(row_begin, row_end, key_begin, key_end, key_end - row_end - left_len)


def row_split(plan: HaloPlan, window_left: int, window_right: int) -> Tuple[Range, Range, Range]:
    """(left edge, interior, right edge) query rows: the interior rows see no
    halo key (computed while the halo travels), the edge rows do."""
    n = plan.length
    lo = min(n, window_left) if plan.left_len > 0 else 0
    hi = max(lo, n - window_right) if plan.right_len > 0 else n
    return (0, lo), (lo, hi), (hi, n)
