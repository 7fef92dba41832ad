"""Temporal alignment: nearest-neighbour hits become matched segments.

Every query window's neighbours vote for a (reference, query transform, time offset)
triple. A real match piles its votes on one offset (per transform: the reference time
is offset + time_scale x query time); chance hits spread over all offsets. The strongest
piles are read out as candidate segments. Votes only rank them: which of several piles over
the same stretch of query is right (a looped passage of the true reference, a look-alike
elsewhere) is settled after ``verify`` has rated each along its whole line, so a clip that
holds two references still returns both.

For audio, ``peak_evidence`` rates a line by its spectral peaks too (lines found from peaks
alone, when no voted line holds up, come from ``index.landmarks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter

OFFSET_BIN_S = 0.25
MIN_PEAKS = 10
"""Fewer reference peaks than this along a line say nothing either way."""


@dataclass(frozen=True)
class Hits:
    """Flattened neighbour hits of one query: parallel arrays, one entry per (window, neighbour)."""

    query_time: np.ndarray    # float32, window start in the query (s)
    reference: np.ndarray     # int64, reference number
    reference_time: np.ndarray  # float32, window start in the reference (s)
    similarity: np.ndarray    # float32, inner product of the descriptors
    time_scale: np.ndarray    # float32, query-rate / reference-rate of the hypothesis
    transform: np.ndarray     # int64, index of the hypothesis


@dataclass(frozen=True)
class Segment:
    """One aligned run of evidence."""

    reference: int
    transform: int            # index of the query-side hypothesis that aligned
    evidence: float           # summed weight of supporting windows
    query_start_s: float
    query_end_s: float        # start of the last supporting window + window length
    reference_start_s: float
    reference_end_s: float
    speed: float              # fitted slope of reference time over query time


def hit_weight(similarity: np.ndarray, floor: float) -> np.ndarray:
    """Only similarity above ``floor`` (what unrelated windows reach) counts as evidence."""
    return np.clip((similarity - floor) / (1.0 - floor), 0.0, None)


def segments(hits: Hits, window_s: float, floor: float, min_evidence: float,
             evidence_cell_s: float = 1.0, max_segments: int = 8) -> list[Segment]:
    """Group hits into candidate segments, strongest first, until evidence drops below
    ``min_evidence``. Candidates may cover the same stretch of query: when a loop of the
    true passage was allowed to suppress the true offset (it often wins the vote), 10 % of
    the dev clean 3 s clips got a wrong offset; 2 % do now.

    Overlapping windows share most of their audio, so a chance likeness repeats across many
    neighbouring windows; evidence therefore counts the best window per ``evidence_cell_s``
    of query time, not every window.
    """
    weight = hit_weight(hits.similarity, floor)
    keep = weight > 0
    if not keep.any():
        return []
    h = {name: getattr(hits, name)[keep] for name in Hits.__dataclass_fields__}
    weight = weight[keep]
    # A window is one (transform, query time): it votes once per pile.
    h["window"] = h["transform"] * (1 << 32) + np.round(h["query_time"] * 1000).astype(np.int64)
    offset = h["reference_time"] - h["time_scale"] * h["query_time"]
    offset_bin = np.round(offset / OFFSET_BIN_S).astype(np.int64)
    key = _pack(h["reference"], h["transform"], offset_bin)
    piles, total = _pile_totals(key, h["window"], weight)
    available = np.ones(len(key), dtype=bool)
    # Neighbouring offset bins of each pile (-1: none): a window may straddle two bins, so
    # half of each neighbour's evidence counts too.
    neighbours = []
    for step in (-1, 1):
        pos = np.minimum(np.searchsorted(piles, piles + step), len(piles) - 1)
        neighbours.append(np.where(piles[pos] == piles + step, pos, -1))
    found: list[Segment] = []
    while len(found) < max_segments and total.max(initial=0.0) > 0:
        smoothed = total.copy()
        for pos in neighbours:
            smoothed[pos >= 0] += 0.5 * total[pos[pos >= 0]]
        best = int(np.argmax(smoothed))
        centre = piles[best]
        support = available & (np.abs(key - centre) <= 1)  # the pile and its neighbour bins
        segment = _segment(h, weight, support, window_s, evidence_cell_s)
        if segment.evidence < min_evidence:
            break
        found.append(segment)
        # Those hits are used: the piles they formed are gone, the others keep their totals.
        available &= ~support
        total[np.abs(piles - centre) <= 1] = 0.0
    return found


def _pile_totals(key: np.ndarray, window: np.ndarray, weight: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Evidence per (reference, transform, offset bin) key, sorted keys first: each window
    votes once per key, with its best neighbour at that offset."""
    order = np.lexsort((-weight, window, key))
    key, window, w = key[order], window[order], weight[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = (key[1:] != key[:-1]) | (window[1:] != window[:-1])
    piles, inverse = np.unique(key[first], return_inverse=True)
    return piles, np.bincount(inverse, weights=w[first])


_BIN_BITS = 24
_TRANSFORM_BITS = 6


def _pack(reference: np.ndarray, transform: np.ndarray, offset_bin: np.ndarray) -> np.ndarray:
    """One sortable int64 per (reference, transform, offset bin); adjacent bins differ by 1."""
    return (((reference.astype(np.int64) << _TRANSFORM_BITS) | transform) << _BIN_BITS) + (
        offset_bin + (1 << (_BIN_BITS - 1)))


def _segment(h: dict[str, np.ndarray], weight: np.ndarray, support: np.ndarray,
             window_s: float, evidence_cell_s: float) -> Segment:
    """Time ranges and speed of the supporting hits (best hit per query window)."""
    idx = np.flatnonzero(support)
    order = np.lexsort((-weight[idx], h["window"][idx]))
    idx = idx[order]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = h["window"][idx][1:] != h["window"][idx][:-1]
    idx = idx[first]
    q = h["query_time"][idx].astype(np.float64)
    r = h["reference_time"][idx].astype(np.float64)
    w = weight[idx].astype(np.float64)
    scale = float(h["time_scale"][idx][0])
    if len(idx) >= 3 and np.ptp(q) > 1.0:
        slope, intercept = np.polyfit(q, r, 1, w=np.sqrt(w))
        if not 0.8 * scale < slope < 1.25 * scale:
            slope, intercept = scale, float(np.average(r - scale * q, weights=w))
    else:
        slope, intercept = scale, float(np.average(r - scale * q, weights=w))
    q_start, q_end = float(q.min()), float(q.max()) + window_s / scale
    cell = np.floor(q / evidence_cell_s)
    return Segment(
        reference=int(h["reference"][idx][0]), transform=int(h["transform"][idx][0]),
        evidence=float(sum(w[cell == c].max() for c in np.unique(cell))),
        query_start_s=q_start, query_end_s=q_end,
        reference_start_s=float(intercept + slope * q_start),
        reference_end_s=float(intercept + slope * q_end), speed=float(slope))


def verify_span(segment: Segment, query_times: np.ndarray, min_span_s: float
                ) -> tuple[float, float]:
    """First and last query window start that verification looks at: the segment's, widened
    to at least ``min_span_s`` (clipped by the query's own windows only through ``verify``'s
    selection)."""
    lo = segment.query_start_s
    hi = float(query_times[query_times <= segment.query_end_s].max(initial=lo))
    widen = max(0.0, min_span_s - (hi - lo)) / 2
    return lo - widen, hi + widen


def verify(segment: Segment, query_vectors: np.ndarray, query_times: np.ndarray,
           reference_vectors: np.ndarray, reference_slots: np.ndarray, hop_s: float,
           min_span_s: float) -> float:
    """Mean similarity of the query windows to the reference windows the segment's line
    puts them on (the better of the two nearest reference slots).

    Votes only see each window's top neighbours; this looks at every window along one
    alignment, so a true match (similar all along) separates from a chance pile of votes
    (similar in a few places). The span checked is the segment's, widened to at least
    ``min_span_s`` of window starts (or the whole query), so that a short chance pile
    is judged against the audio around it too.
    """
    lo, hi = verify_span(segment, query_times, min_span_s)
    inside = (query_times >= lo - 1e-3) & (query_times <= hi + 1e-3)
    q_vectors, q_times = query_vectors[inside], query_times[inside]
    if len(q_times) == 0 or len(reference_slots) == 0:
        return 0.0
    ref_time = segment.reference_start_s + (q_times - segment.query_start_s) * segment.speed
    position = ref_time / hop_s
    best = np.full(len(q_times), -1.0, np.float32)
    for slot in (np.floor(position), np.ceil(position)):
        row = np.searchsorted(reference_slots, slot.astype(np.int64))
        # A slot may hold several descriptors (views of one frame): the best one counts.
        while True:
            present = row < len(reference_slots)
            present[present] = reference_slots[row[present]] == slot[present]
            if not present.any():
                break
            sims = np.einsum("ij,ij->i", q_vectors[present], reference_vectors[row[present]])
            best[present] = np.maximum(best[present], sims)
            row = np.where(present, row + 1, len(reference_slots))
    return float(np.mean(np.clip(best, 0.0, None)))


def refine(segment: Segment, speeds: tuple[float, ...], shift_s: float,
           query_vectors: np.ndarray, query_times: np.ndarray, reference_vectors: np.ndarray,
           reference_slots: np.ndarray, hop_s: float, min_span_s: float
           ) -> tuple[Segment, float]:
    """The alignment line through the segment's middle that ``verify`` rates best, over
    ``speeds`` and shifts of the middle by up to ``shift_s`` (in steps of ``hop_s``).

    Votes fix the middle of a segment well but its slope poorly when the picture changes
    slowly (a held shot, a slow zoom): every speed then finds neighbours, and a wrong slope
    moves the reported start by seconds. Rating whole lines settles both.
    """
    middle_q = (segment.query_start_s + segment.query_end_s) / 2
    middle_r = segment.reference_start_s + (middle_q - segment.query_start_s) * segment.speed
    best, best_similarity = segment, -1.0
    for speed in (segment.speed, *speeds):
        for shift in np.arange(-shift_s, shift_s + hop_s / 2, hop_s):
            start = middle_r + shift - (middle_q - segment.query_start_s) * speed
            line = Segment(segment.reference, segment.transform, segment.evidence,
                           segment.query_start_s, segment.query_end_s, start,
                           start + (segment.query_end_s - segment.query_start_s) * speed,
                           float(speed))
            similarity = verify(line, query_vectors, query_times, reference_vectors,
                                reference_slots, hop_s, min_span_s)
            if similarity > best_similarity + 1e-6:
                best, best_similarity = line, similarity
    return best, best_similarity


def detail(vectors: np.ndarray, slots: np.ndarray, half_width: int
           ) -> tuple[np.ndarray, int]:
    """Descriptors laid on a regular grid of slots (the first one of a slot that holds several
    views), each less the mean of the ``2 half_width + 1`` around it: what changes from frame
    to frame. Rows whose window is not all present (the ends, gaps) are zero: a truncated
    window would leave the trend of a slow zoom in them, and the ends of a clip would then
    correlate with the start of every reference.

    A held or slowly moving shot looks the same to the descriptors for seconds, so every line
    through it rates alike; the small changes between its frames (leaves in the wind, a
    flicker of light) are what places a clip inside it. Returns (grid, slot of its first row).
    """
    if half_width < 1:
        raise ValueError(f"half_width must be at least 1, got {half_width}")
    if len(slots) == 0:
        return np.zeros((0, vectors.shape[1]), np.float32), 0
    first_of_slot, row = np.unique(slots, return_index=True)
    start = int(first_of_slot[0])
    grid = np.zeros((int(first_of_slot[-1]) - start + 1, vectors.shape[1]), np.float64)
    present = np.zeros(len(grid))
    grid[first_of_slot - start] = vectors[row]
    present[first_of_slot - start] = 1.0
    width = 2 * half_width + 1
    full = np.zeros(len(grid), dtype=bool)
    if len(grid) >= width:
        padded = np.vstack([np.zeros((1, grid.shape[1])), np.cumsum(grid, axis=0)])
        counts = np.concatenate([[0.0], np.cumsum(present)])
        sums = padded[width:] - padded[:-width]  # window sums, centred on rows hw .. n-hw-1
        middle = slice(half_width, len(grid) - half_width)
        full[middle] = counts[width:] - counts[:-width] == width
        grid[middle] -= sums / width
    grid[~full] = 0.0
    return grid.astype(np.float32), start


def localise(segment: Segment, speeds: tuple[float, ...], query_detail: tuple[np.ndarray, int],
             reference_detail: tuple[np.ndarray, int], hop_s: float, range_s: float
             ) -> tuple[Segment, float]:
    """The line, over the segment's speed and ``speeds`` and shifts of its start by up to
    ``range_s``, along which the query's frame-to-frame detail (``detail`` of its frames)
    correlates best with the reference's, and how far that correlation stands out: a z-score
    against the correlations of the same speed more than a second away (0 when there is
    nothing to correlate). Both grids are in slots of ``hop_s``."""
    (query, query_first), (reference, reference_first) = query_detail, reference_detail
    best, best_correlation, best_z = segment, 0.0, 0.0
    if len(query) == 0 or len(reference) == 0:
        return best, best_z
    query_s = (query_first + np.arange(len(query))) * hop_s - segment.query_start_s
    reach = round(range_s / hop_s)
    shifts = np.arange(-reach, reach + 1)
    products = query @ reference.T  # every query row against every reference row, once
    energy = np.einsum("jd,jd->j", reference, reference)
    query_energy = float(np.einsum("jd,jd->", query, query))
    columns = np.arange(len(query))[None, :]
    for speed in (segment.speed, *speeds):
        on_line = np.round((segment.reference_start_s + query_s * speed) / hop_s
                           ).astype(np.int64) - reference_first
        rows = on_line[None, :] + shifts[:, None]
        inside = (rows >= 0) & (rows < len(reference))
        rows = np.clip(rows, 0, len(reference) - 1)
        numerator = np.where(inside, products[columns, rows], 0.0).sum(axis=1)
        denominator = np.sqrt(np.where(inside, energy[rows], 0.0).sum(axis=1) * query_energy)
        correlation = np.where(denominator > 0, numerator / np.maximum(denominator, 1e-12), 0.0)
        top = int(np.argmax(correlation))
        far = correlation[np.abs(shifts - shifts[top]) * hop_s > 1.0]
        if correlation[top] <= best_correlation + 1e-6 or len(far) < 2 or np.std(far) == 0:
            continue
        start = segment.reference_start_s + shifts[top] * hop_s
        best_correlation = float(correlation[top])
        best_z = float((best_correlation - np.mean(far)) / np.std(far))
        best = Segment(segment.reference, segment.transform, segment.evidence,
                       segment.query_start_s, segment.query_end_s, start,
                       start + (segment.query_end_s - segment.query_start_s) * speed,
                       float(speed))
    return best, best_z


def peak_map(frames: np.ndarray, bands: np.ndarray, shape: tuple[int, int],
             tolerance: tuple[int, int]) -> np.ndarray:
    """Boolean (frames x bands) map of the query's peaks, each grown by ``tolerance`` (frames,
    bands) either way: a reference peak counts as found if it lands in a grown cell."""
    found = np.zeros(shape, dtype=bool)
    found[frames, bands] = True
    dt, db = tolerance
    return maximum_filter(found, size=(2 * dt + 1, 2 * db + 1), mode="constant")


def peak_evidence(segment: Segment, reference_frames: np.ndarray, reference_bands: np.ndarray,
                  query_map: np.ndarray, frame_rate_hz: float, band_shift: int,
                  max_time_shift: int, max_band_shift: int) -> float:
    """How far above chance the reference peaks given (frame and band indices) land on the
    query's along the segment's line, as a z-score: the best over small time shifts (frames)
    and band shifts around ``band_shift`` (the hypothesis' pitch change, in bands).

    Chance is each band's share of found cells in the query map, summed over the reference
    peaks tested; hits follow a binomial around it. Peaks are exact to a frame (32 ms) and a
    third of a semitone, so a look-alike passage that shares the coarse shape of the music
    still falls to chance here.
    """
    n_frames, n_bands = query_map.shape
    if len(reference_frames) < MIN_PEAKS:
        return 0.0
    intercept = segment.reference_start_s - segment.speed * segment.query_start_s
    frames = np.round((reference_frames / frame_rate_hz - intercept)
                      / segment.speed * frame_rate_hz).astype(np.int64)
    rows = frames[None, None, :] + np.arange(-max_time_shift, max_time_shift + 1)[:, None, None]
    cols = (reference_bands[None, None, :] + band_shift
            + np.arange(-max_band_shift, max_band_shift + 1)[None, :, None])
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (rows >= 0) & (rows < n_frames) & (cols >= 0) & (cols < n_bands)
    hits = np.where(inside, query_map[np.clip(rows, 0, n_frames - 1),
                                      np.clip(cols, 0, n_bands - 1)], False).sum(axis=2)
    density = query_map.mean(axis=0)
    expected = np.where(inside, density[np.clip(cols, 0, n_bands - 1)], 0.0).sum(axis=2)
    tested = inside.sum(axis=2)
    variance = np.maximum(expected * (1.0 - expected / np.maximum(tested, 1)), 1e-6)
    z = np.where(tested >= MIN_PEAKS, (hits - expected) / np.sqrt(variance), 0.0)
    return float(z.max())
