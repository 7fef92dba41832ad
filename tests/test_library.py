"""Each library stage on its own, with real decoded music from tests/fixtures."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from fingerprint.audio import (
    FRAME_RATE_HZ,
    N_BANDS,
    PEAK_BLOCK_FRAMES,
    PEAK_NEIGHBOURHOOD,
    PEAKS_PER_S,
    QUERY_GRID,
    REFERENCE_HOP_S,
    BandFrames,
    Transform,
    band_frames,
    descriptors,
    peak_frames_bands,
    peaks,
)
from fingerprint.decode import (
    SAMPLE_RATE,
    MediaError,
    MediaTooLong,
    decode_audio,
    decode_media,
)
from index import catalog as catalog_module
from index import landmarks
from index.align import Segment, peak_evidence, peak_map
from index.catalog import (
    AUDIO,
    PEAK_BAND_SHIFT,
    PEAK_TIME_SHIFT,
    PEAK_TOLERANCE,
    Catalog,
    DuplicateError,
    NotFoundError,
    fingerprint_reference,
)
from index.store import Fingerprints, Store
from tests.media import (
    CATALOGUE,
    audio_then_video,
    encode,
    excerpt,
    fixture,
    load,
    sped_up,
    video_fixture,
    video_only,
    with_noise,
    with_speech,
)

# -- decode -------------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "codec", "bit_rate"), [
    (".mp3", "libmp3lame", 32_000), (".opus", "libopus", 24_000), (".flac", "flac", None),
    (".wav", "pcm_s16le", None), (".m4a", "aac", 48_000), (".mkv", "libopus", 32_000),
    (".webm", "libopus", 32_000), (".ogg", "libopus", 32_000)])
def test_decode_common_containers(tmp_path: Path, suffix: str, codec: str,
                                  bit_rate: int | None) -> None:
    source = excerpt(load(fixture("battle")), 0, 4)
    path = encode(tmp_path / f"clip{suffix}", source, codec=codec, bit_rate=bit_rate, channels=2)
    samples = decode_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size / SAMPLE_RATE - 4.0) < 0.1
    assert 0.01 < np.sqrt(np.mean(samples**2)) < 1.0


@pytest.mark.parametrize(("codec", "tolerance"), [
    ("pcm_u8", 1 / 64), ("pcm_s16le", 1e-4), ("pcm_s32le", 1e-6), ("pcm_f32le", 1e-6),
    ("pcm_f64le", 1e-6)])
def test_decode_every_sample_format_to_the_same_samples(tmp_path: Path, codec: str,
                                                        tolerance: float) -> None:
    """Stereo PCM at 8 kHz (nothing to resample) in each sample format decodes to the source:
    integer formats scaled to [-1, 1], unsigned bytes centred."""
    source = excerpt(load(fixture("battle"), SAMPLE_RATE), 0, 2, SAMPLE_RATE) * 0.5
    samples = decode_audio(encode(tmp_path / "clip.wav", source, SAMPLE_RATE, codec=codec,
                                  channels=2))
    assert samples.shape == source.shape
    assert np.abs(samples - source).max() < tolerance


def test_decode_resamples_a_tone_to_the_same_pitch_and_level(tmp_path: Path) -> None:
    """A 1 kHz tone at 44.1 kHz comes out of the 8 kHz decoder at 1 kHz, as loud, as long."""
    rate = 44_100
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(3 * rate) / rate)
    samples = decode_audio(encode(tmp_path / "tone.wav", tone, sample_rate=rate, channels=2))
    assert abs(samples.size - 3 * SAMPLE_RATE) <= 1
    middle = samples[SAMPLE_RATE:2 * SAMPLE_RATE]
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over one second
    assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < 0.01


def test_decode_bytes_equals_path() -> None:
    path = fixture("knolls")
    assert np.array_equal(decode_audio(path.read_bytes()), decode_audio(path))


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "empty"),
    (b"this is plainly not media, just some text pretending to be an mp3" * 20, "not a media"),
])
def test_decode_rejects_non_media(payload: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        decode_audio(payload)


def test_decode_truncated_file_is_rejected_or_partial() -> None:
    data = fixture("battle").read_bytes()
    with pytest.raises(MediaError):
        decode_audio(data[:200])
    partial = decode_audio(data[: len(data) // 2])  # half a file decodes to about half
    assert 10 < partial.size / SAMPLE_RATE < 20


# -- fingerprint --------------------------------------------------------------------------


def _frames(name: str, start_s: float, duration_s: float, speed: float = 1.0) -> BandFrames:
    samples = excerpt(load(fixture(name), SAMPLE_RATE), start_s, duration_s, SAMPLE_RATE)
    if speed != 1.0:
        samples = sped_up(samples, speed)
    return band_frames(samples)


def test_band_frames_shape_and_rate() -> None:
    frames = _frames("battle", 0, 10)
    assert frames.values.shape[1] == N_BANDS
    assert abs(frames.duration_s - 10.0) < 0.2
    assert frames.frame_rate_hz == FRAME_RATE_HZ


def test_band_frames_validates_input() -> None:
    with pytest.raises(ValueError, match="mono"):
        band_frames(np.zeros((2, 8000), np.float32))
    with pytest.raises(ValueError, match="Hz"):
        band_frames(np.zeros(8000, np.float32), sample_rate=44_100)
    with pytest.raises(ValueError, match="shape"):
        BandFrames(np.zeros((10, 3), np.float32))


def test_silence_has_no_descriptors() -> None:
    vectors, times, _ = descriptors(band_frames(np.zeros(SAMPLE_RATE * 5, np.float32)),
                                    REFERENCE_HOP_S)
    assert len(vectors) == 0 and len(times) == 0


def _best_similarity(reference: BandFrames, query: BandFrames, transform: Transform) -> float:
    ref_vectors, _, _ = descriptors(reference, REFERENCE_HOP_S)
    query_vectors, _, _ = descriptors(query, 0.125, (transform,))
    return float(np.median((query_vectors @ ref_vectors.T).max(axis=1)))


def test_query_grid_recovers_a_speed_change() -> None:
    """A 5 % faster clip matches poorly as it is and well under the matching transform."""
    reference = _frames("knolls", 0, 30)
    fast = _frames("knolls", 5, 10.5, speed=1.05)
    identity = _best_similarity(reference, fast, Transform())
    best = max(_best_similarity(reference, fast, t) for t in QUERY_GRID)
    assert best > 0.85
    assert best > identity + 0.1


def test_unrelated_music_is_dissimilar() -> None:
    reference = _frames("knolls", 0, 30)
    other = _frames("battle", 5, 10)
    assert _best_similarity(reference, other, Transform()) < 0.7


def test_peaks_are_local_maxima_within_the_quota() -> None:
    frames = _frames("knolls", 0, 30)
    codes = peaks(frames)
    assert np.all(np.diff(codes.astype(np.int64)) > 0)
    frame, band = peak_frames_bands(codes)
    assert np.bincount(frame // PEAK_BLOCK_FRAMES).max() <= (
        PEAKS_PER_S * PEAK_BLOCK_FRAMES / FRAME_RATE_HZ + 1)
    assert len(codes) > 0.8 * PEAKS_PER_S * 30  # music has peaks to spare
    dt, db = (n // 2 for n in PEAK_NEIGHBOURHOOD)
    values = frames.values
    assert all(values[f, b] >= values[max(f - dt, 0):f + dt + 1, max(b - db, 0):b + db + 1].max()
               for f, b in zip(frame, band, strict=True))


def _peak_query(samples: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    frames = band_frames(samples)
    found = peak_frames_bands(peaks(frames))
    return found, peak_map(*found, frames.values.shape, PEAK_TOLERANCE)


def test_peak_evidence_singles_out_the_true_line_under_speech_at_0db() -> None:
    """Speech as loud as the music: the reference's peaks still land on the clip's far above
    chance along the true line, and at chance along other lines or in another track."""
    clip = excerpt(load(fixture("knolls"), SAMPLE_RATE), 12.0, 8.0, SAMPLE_RATE)
    _, query_map = _peak_query(with_speech(clip, 0.0, SAMPLE_RATE))

    def z(name: str, start_s: float) -> float:
        reference = peak_frames_bands(peaks(_frames(name, 0, 30)))
        line = Segment(0, 0, 1.0, 0.0, 8.0, start_s, start_s + 8.0, 1.0)
        return peak_evidence(line, *reference, query_map, FRAME_RATE_HZ, 0, PEAK_TIME_SHIFT,
                             PEAK_BAND_SHIFT)

    assert z("knolls", 12.0) > 8.0
    assert max(z("knolls", start) for start in (2.0, 6.0, 17.0, 21.0)) < 4.0
    assert max(z("battle", start) for start in (2.0, 12.0, 21.0)) < 4.0


def _landmark_table(names: tuple[str, ...]) -> landmarks.Landmarks:
    """The first 30 s of each fixture as reference number 1, 2, ..."""
    table = landmarks.Landmarks()
    for number, name in enumerate(names, 1):
        table.add(number, peak_frames_bands(peaks(_frames(name, 0, 30))))
    return table


def _strongest(table: landmarks.Landmarks, frames: np.ndarray, bands: np.ndarray
               ) -> list[tuple[int, int, int]]:
    keys, anchors = landmarks.landmarks(frames, bands, landmarks.QUERY_SUCCESSORS)
    return landmarks.strongest(*table.lookup(keys, anchors), PEAK_TOLERANCE[0], 8)


@pytest.mark.parametrize("degrade", [lambda clip: with_noise(clip, 0.0),
                                     lambda clip: with_speech(clip, 0.0, SAMPLE_RATE)],
                         ids=["noise-0db", "speech-0db"])
def test_landmarks_find_the_track_and_where_a_noisy_clip_starts(degrade) -> None:
    """Among four tracks, a 5 s clip under noise or speech as loud as the music votes for its
    own track at its own start, well above any other line."""
    table = _landmark_table(("battle", "knolls", "loyalists", "breaking_the_chains"))
    clip = excerpt(load(fixture("knolls"), SAMPLE_RATE), 12.0, 5.0, SAMPLE_RATE)
    (frames, bands), _ = _peak_query(degrade(clip))
    (number, offset, votes), *others = _strongest(table, frames, bands)
    assert number == 2 and abs(offset / FRAME_RATE_HZ - 12.0) <= 0.1
    assert votes >= 3 * max(n for _, _, n in others)


def test_landmark_tables_join_persist_and_forget_a_reference(tmp_path: Path) -> None:
    """Joined, written and read back, a fresh table answers as the tables it was made of;
    a removed reference is gone from it and the others answer as before."""
    names = ("battle", "knolls", "loyalists")
    table = _landmark_table(names)
    queries = [peak_frames_bands(peaks(_frames(name, 10, 4))) for name in names]
    table.write(tmp_path / "t.landmarks")
    read = landmarks.Landmarks.read(tmp_path / "t.landmarks")
    assert read.nbytes == table.nbytes > 0
    for number, query in enumerate(queries, 1):
        found = _strongest(read, *query)
        assert found == _strongest(table, *query)
        assert found[0][0] == number and abs(found[0][1] - 10 * FRAME_RATE_HZ) <= 1
    table.remove(2)
    assert all(number != 2 for number, _, _ in _strongest(table, *queries[1]))
    for number in (1, 3):
        assert _strongest(table, *queries[number - 1]) == _strongest(read, *queries[number - 1])


# -- catalogue: store, index, alignment ---------------------------------------------------


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    catalog = Catalog(tmp_path_factory.mktemp("catalog"))
    for name in CATALOGUE:
        catalog.register(fixture(name), title=name)
    return catalog


def _write(tmp_path: Path, samples: np.ndarray, name: str = "clip.wav") -> Path:
    return encode(tmp_path / name, samples)


def test_match_finds_title_offset_and_speed(catalogue: Catalog, tmp_path: Path) -> None:
    samples = sped_up(excerpt(load(fixture("loyalists")), 12.0, 8.4), 1.05)
    matches = catalogue.match_media(_write(tmp_path, samples))
    assert matches and matches[0].title == "loyalists"
    top = matches[0]
    reference_at_zero = top.reference_start_s - top.query_start_s * top.speed
    assert abs(reference_at_zero - 12.0) < 0.5
    assert abs(top.speed - 1.05) < 0.01
    assert 0.5 <= top.score <= 1.0


def test_clip_holding_two_references_returns_both(catalogue: Catalog, tmp_path: Path) -> None:
    first = excerpt(load(fixture("battle")), 3.0, 10.0)
    second = excerpt(load(fixture("knolls")), 15.0, 10.0)
    matches = catalogue.match_media(_write(tmp_path, np.concatenate([first, second])))
    by_title = {m.title: m for m in matches}
    assert set(by_title) == {"battle", "knolls"}
    assert by_title["battle"].query_end_s < 11.5 and by_title["knolls"].query_start_s > 8.5
    assert abs(by_title["knolls"].reference_start_s
               - (15.0 + by_title["knolls"].query_start_s - 10.0)) < 0.5


@pytest.mark.parametrize("name", CATALOGUE)
def test_clip_under_speech_at_0db_matches_with_its_offset(catalogue: Catalog, tmp_path: Path,
                                                          name: str) -> None:
    """Commentary as loud as the music (the window descriptors alone missed knolls and
    loyalists here: the peak check finds them)."""
    samples = with_speech(excerpt(load(fixture(name)), 14.0, 6.0), 0.0)
    matches = catalogue.match_media(_write(tmp_path, samples))
    assert matches and matches[0].title == name
    top = matches[0]
    assert abs(top.reference_start_s - top.query_start_s * top.speed - 14.0) < 0.5


def test_non_catalogue_music_and_speech_do_not_match(catalogue: Catalog) -> None:
    assert catalogue.match_media(fixture("wanderer_not_in_catalogue")) == []
    assert catalogue.match_media(fixture("speech_not_in_catalogue")) == []


def test_silent_query_matches_nothing(catalogue: Catalog, tmp_path: Path) -> None:
    assert catalogue.match_media(_write(tmp_path, np.zeros(5 * 22_050, np.float32))) == []


def test_duplicate_bytes_are_noticed(catalogue: Catalog) -> None:
    existing = {r.title: r.reference_id for r in catalogue.list()[0]}
    with pytest.raises(DuplicateError) as caught:
        catalogue.register(fixture("battle"), title="battle again")
    assert caught.value.reference_id == existing["battle"]


def test_list_pages_in_registration_order(catalogue: Catalog) -> None:
    first, token, total = catalogue.list(page_size=3)
    rest, end, _ = catalogue.list(page_size=3, page_token=token)
    assert total == len(CATALOGUE) and end == ""
    assert [r.title for r in first + rest] == list(CATALOGUE)
    with pytest.raises(ValueError, match="page_token"):
        catalogue.list(page_token="bogus")


def test_restart_delete_and_rebuild(tmp_path: Path) -> None:
    """The index survives a restart, a deletion is seen by the next query, and a lost index
    file is rebuilt from the stored fingerprints."""
    query = _write(tmp_path, excerpt(load(fixture("breaking_the_chains")), 4.0, 6.0))
    data = tmp_path / "data"
    catalog = Catalog(data)
    kept = catalog.register(fixture("breaking_the_chains"), title="chains")
    gone = catalog.register(fixture("battle"), title="battle")
    catalog.close()

    catalog = Catalog(data)
    assert catalog._indexes["audio"].index.segments == 1  # sealed (exact) on close, and read
    assert [m.title for m in catalog.match_media(query)] == ["chains"]
    catalog.delete(kept.reference_id)
    assert catalog.match_media(query) == []
    with pytest.raises(NotFoundError):
        catalog.get(kept.reference_id)
    with pytest.raises(NotFoundError):
        catalog.delete(kept.reference_id)
    catalog.close()

    (data / "index" / "audio" / "manifest.json").write_text("damaged")
    catalog = Catalog(data)
    assert catalog.get(gone.reference_id).title == "battle"
    battle = _write(tmp_path, excerpt(load(fixture("battle")), 10.0, 6.0), "battle.wav")
    assert [m.title for m in catalog.match_media(battle)] == ["battle"]
    catalog.close()


def test_tenants_see_register_and_match_only_their_own_references(tmp_path: Path) -> None:
    """The same bytes may be registered once per tenant; a tenant's get, delete, list and
    match see only its own references (another's is not found, like an unknown id), and
    None sees every tenant's."""
    catalog = Catalog(tmp_path / "data")
    a_battle = catalog.register(fixture("battle"), title="battle", tenant="a")
    a_knolls = catalog.register(fixture("knolls"), title="knolls", tenant="a")
    b_knolls = catalog.register(fixture("knolls"), title="knolls", tenant="b")
    assert (a_battle.tenant, b_knolls.tenant) == ("a", "b")
    with pytest.raises(DuplicateError) as caught:
        catalog.register(fixture("knolls"), title="again", tenant="b")
    assert caught.value.reference_id == b_knolls.reference_id
    for call in (catalog.get, catalog.delete):
        with pytest.raises(NotFoundError, match="no reference with id"):
            call(a_battle.reference_id, "b")
    assert catalog.get(a_battle.reference_id).tenant == "a"
    page, _, total = catalog.list(tenant="b")
    assert ([r.reference_id for r in page], total) == ([b_knolls.reference_id], 1)
    assert catalog.list()[2] == 3 and catalog.list(tenant="nobody")[2] == 0

    under_speech = _write(tmp_path, with_speech(excerpt(load(fixture("battle")), 14.0, 6.0),
                                                0.0))
    assert [m.reference_id for m in catalog.match_media(under_speech, "a")] == [
        a_battle.reference_id]
    assert catalog.match_media(under_speech, "b") == []
    knolls = _write(tmp_path, excerpt(load(fixture("knolls")), 8.0, 6.0), "knolls.wav")
    for tenant, reference in (("a", a_knolls), ("b", b_knolls)):
        assert [m.reference_id for m in catalog.match_media(knolls, tenant)] == [
            reference.reference_id]
    assert catalog.delete(b_knolls.reference_id, "b") == b_knolls
    assert catalog.match_media(knolls, "b") == []
    catalog.close()


V0_REFERENCE_TABLE = """
CREATE TABLE reference (
    number INTEGER PRIMARY KEY AUTOINCREMENT,
    reference_id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    external_id TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    duration_s REAL NOT NULL,
    modalities TEXT NOT NULL,
    created_at REAL NOT NULL,
    content_sha256 TEXT NOT NULL UNIQUE,
    fingerprint_format TEXT NOT NULL
);
"""
"""The table as versions before tenants wrote it (user_version 0)."""


def _as_written_before_tenants(database: Path) -> None:
    """Turn a catalogue back into the schema of versions before tenants, rows, numbers and
    AUTOINCREMENT counter kept."""
    db = sqlite3.connect(database, isolation_level=None)
    db.executescript(f"""
        BEGIN;
        DROP INDEX reference_tenant;
        ALTER TABLE reference RENAME TO current;
        {V0_REFERENCE_TABLE}
        INSERT INTO reference SELECT number, reference_id, title, external_id, metadata,
            duration_s, modalities, created_at, content_sha256, fingerprint_format FROM current;
        UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'current')
            WHERE name = 'reference';
        DROP TABLE current;
        PRAGMA user_version = 0;
        COMMIT;""")
    db.close()


def test_catalogue_of_a_version_before_tenants_opens_with_its_references_in_default(
        tmp_path: Path) -> None:
    """Its references belong to the default tenant and still match; a deleted reference's
    number (a tombstone in the sealed index segment) is not given out again."""
    data = tmp_path / "data"
    catalog = Catalog(data)
    kept = catalog.register(fixture("battle"), title="battle")
    gone = catalog.register(fixture("knolls"), title="knolls")
    catalog.close()  # seals both into a segment
    catalog = Catalog(data)
    catalog.delete(gone.reference_id)
    catalog.close()
    _as_written_before_tenants(data / "catalog.sqlite")

    catalog = Catalog(data)
    assert [(r.reference_id, r.tenant) for r in catalog.list()[0]] == [
        (kept.reference_id, "default")]
    battle = _write(tmp_path, excerpt(load(fixture("battle")), 10.0, 6.0), "battle.wav")
    assert [m.reference_id for m in catalog.match_media(battle, "default")] == [
        kept.reference_id]
    with pytest.raises(DuplicateError):
        catalog.register(fixture("battle"), title="battle again")
    other = catalog.register(fixture("battle"), title="battle", tenant="other")
    again = catalog.register(fixture("knolls"), title="knolls again")
    knolls = _write(tmp_path, excerpt(load(fixture("knolls")), 8.0, 6.0), "knolls.wav")
    assert [m.reference_id for m in catalog.match_media(knolls)] == [again.reference_id]
    catalog.close()
    db = sqlite3.connect(data / "catalog.sqlite")
    numbers = dict(db.execute("SELECT reference_id, number FROM reference").fetchall())
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
    assert numbers[other.reference_id] == 3 and numbers[again.reference_id] == 4


def test_ingest_processes_register_in_parallel_what_one_thread_would(tmp_path: Path) -> None:
    """Registrations fingerprinted in a pool of processes, several at once, store what the
    registering thread would have: the same clips match at the same offsets; bad media
    still gets its message across the process boundary and stores nothing."""
    names = ("battle", "knolls", "loyalists", "breaking_the_chains")
    clips = {name: _write(tmp_path, excerpt(load(fixture(name)), 7.0, 5.0), f"{name}.wav")
             for name in names}
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio at all" * 100)
    answers = {}
    for processes in (0, 2):
        catalog = Catalog(tmp_path / f"data{processes}", ingest_processes=processes)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda name, c=catalog: c.register(fixture(name), title=name), names))
        with pytest.raises(MediaError, match="not a media file"):
            catalog.register(bad, title="bad")
        assert catalog.list()[2] == len(names)
        answers[processes] = {name: [(m.title, round(m.reference_start_s, 3))
                                     for m in catalog.match_media(clip)]
                              for name, clip in clips.items()}
        catalog.close()
    assert answers[2] == answers[0]
    assert all(found and found[0][0] == name for name, found in answers[0].items())


def test_reference_registered_from_its_fingerprints_matches(tmp_path: Path) -> None:
    """Fingerprints computed apart from the catalogue (``fingerprint_reference``) register a
    reference that matches like one registered from the media; malformed ones are refused."""
    duration_s, fingerprints = fingerprint_reference(fixture("knolls"))
    catalog = Catalog(tmp_path / "data")
    digest = "ab" * 32
    with pytest.raises(ValueError, match="vectors"):
        catalog.register_fingerprints(
            {"audio": Fingerprints(fingerprints["audio"].vectors[:, :5],
                                   fingerprints["audio"].times)},
            title="knolls", duration_s=duration_s, content_sha256=digest)
    with pytest.raises(ValueError, match="modality"):
        catalog.register_fingerprints({"smell": fingerprints["audio"]}, title="knolls",
                                      duration_s=duration_s, content_sha256=digest)
    broken = fingerprints["audio"].vectors.copy()
    broken[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        catalog.register_fingerprints(
            {"audio": Fingerprints(broken, fingerprints["audio"].times)}, title="knolls",
            duration_s=duration_s, content_sha256=digest)
    assert catalog.list()[2] == 0
    catalog.register_fingerprints(fingerprints, title="knolls", duration_s=duration_s,
                                  content_sha256=digest)
    with pytest.raises(DuplicateError):
        catalog.register_fingerprints(fingerprints, title="again", duration_s=duration_s,
                                      content_sha256=digest)
    clip = _write(tmp_path, excerpt(load(fixture("knolls")), 11.0, 6.0))
    matches = catalog.match_media(clip)
    assert matches and matches[0].title == "knolls"
    assert abs(matches[0].reference_start_s - 11.0) < 0.3
    catalog.close()


def test_trained_index_is_loaded_after_a_restart(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the catalogue is big enough (lowered here to four fixtures) the audio quantiser is
    trained in the background as the configured inverted file; it is loaded, not trained
    again, after a restart, and still finds a sped-up clip."""
    small = replace(AUDIO, layout=replace(AUDIO.layout, train_min=300))
    monkeypatch.setattr(catalog_module, "MODALITIES", (small, catalog_module.VIDEO))
    query = _write(tmp_path, sped_up(excerpt(load(fixture("knolls")), 9.0, 8.0), 0.95))
    data = tmp_path / "data"
    catalog = Catalog(data)
    for name in CATALOGUE:
        catalog.register(fixture(name), title=name)
    catalog.wait_for_index()
    trained = catalog._indexes["audio"].index
    assert trained.factory == small.layout.factory_for(trained.trained_on)
    assert trained.factory.startswith("IVF") and trained.trained_on >= 300
    for reopen in (False, True):
        if reopen:
            catalog.close()
            catalog = Catalog(data)
            index = catalog._indexes["audio"].index
            assert (index.factory, index.trained_on) == (trained.factory, trained.trained_on)
        matches = catalog.match_media(query)
        assert matches and matches[0].title == "knolls"
        assert abs(matches[0].speed - 0.95) < 0.01
    catalog.close()


def test_block_resampling_is_seamless() -> None:
    """Decoding mixes and resamples codec frames in blocks (2**16 samples) to keep per-frame
    work small; the joins must not show: the result equals resampling the whole track at
    once."""
    import av

    from fingerprint.decode import _BlockResampler

    source = load(fixture("battle"), 44_100)
    resampler = _BlockResampler(44_100, SAMPLE_RATE)
    for start in range(0, source.size, 3_000):
        part = source[start:start + 3_000]
        frame = av.AudioFrame.from_ndarray(np.stack([part, part]), format="fltp",
                                           layout="stereo")
        frame.sample_rate = 44_100
        resampler.push(frame)
    blocked = resampler.finish()
    whole = av.AudioFrame.from_ndarray(source[None, :], format="flt", layout="mono")
    whole.sample_rate = 44_100
    once = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    reference = np.concatenate([f.to_ndarray()[0] for f in [*once.resample(whole),
                                                            *once.resample(None)]])
    assert blocked.size == reference.size == round(source.size * SAMPLE_RATE / 44_100)
    assert np.max(np.abs(blocked - reference)) < 1e-5


def test_data_dir_of_another_fingerprint_format_is_refused(tmp_path: Path) -> None:
    """Fingerprints written by an older version cannot be compared with this one's queries:
    opening says so plainly and leaves the data untouched."""
    data = tmp_path / "data"
    catalog = Catalog(data)
    catalog.register(fixture("battle"), title="battle")
    catalog.close()
    with sqlite3.connect(data / "catalog.sqlite") as db:
        db.execute("UPDATE reference SET fingerprint_format = 'logbands-v1'")
    db.close()
    with pytest.raises(ValueError, match=r"1 in 'logbands-v1'.*Register the media again"):
        Catalog(data)
    with sqlite3.connect(data / "catalog.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM reference").fetchone() == (1,)
    db.close()


def test_one_decoder_thread_decodes_the_same_frames() -> None:
    """Ingest processes decode video on one thread each; the frames are the ones FFmpeg's
    own threading gives."""
    from fingerprint.decode import set_decoder_threads

    threaded = decode_media(video_fixture("intro_excerpt"))
    set_decoder_threads(1)
    try:
        single = decode_media(video_fixture("intro_excerpt"))
    finally:
        set_decoder_threads(0)
    assert threaded.frames is not None and single.frames is not None
    assert np.array_equal(threaded.frames, single.frames)
    assert np.array_equal(threaded.frame_times, single.frame_times)
    with pytest.raises(ValueError, match="count"):
        set_decoder_threads(-1)


def test_video_damaged_in_the_middle_decodes_around_the_damage(tmp_path: Path) -> None:
    """A corrupt stretch of a file costs the frames and sound inside it, not the rest."""
    intact = video_fixture("intro_excerpt")
    data = bytearray(intact.read_bytes())
    data[len(data) * 2 // 5:len(data) * 3 // 5] = bytes(len(data) // 5)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    whole, partial = decode_media(intact), decode_media(damaged)
    assert whole.frames is not None and partial.frames is not None
    assert partial.samples is not None and whole.samples is not None
    assert len(partial.frames) < len(whole.frames)
    assert partial.frame_times[0] < 1.0 and partial.frame_times[-1] > 25.0
    assert 0.3 * whole.samples.size < partial.samples.size < whole.samples.size


def test_pictures_beyond_8k_are_refused_before_decoding(tmp_path: Path) -> None:
    huge = video_only(tmp_path / "huge.mkv", frames=2, size=(7696, 4336), codec="mjpeg",
                      pix_fmt="yuvj420p")
    with pytest.raises(MediaError, match="7696x4336, larger than the 8K"):
        decode_media(huge)


def test_pictures_beyond_8k_are_refused_when_they_start_late(tmp_path: Path) -> None:
    """Streams are described from the file's first 64 kB, which here hold only sound: the
    picture's size must still be known, and refused, before FFmpeg decodes it."""
    huge = audio_then_video(tmp_path / "huge.ts", size=(7696, 4336))
    with pytest.raises(MediaError, match="7696x4336, larger than the 8K"):
        decode_media(huge)
    decoded = decode_media(audio_then_video(tmp_path / "small.ts", size=(320, 240)))
    assert decoded.samples is not None and abs(decoded.samples.size / SAMPLE_RATE - 6.0) < 0.2
    assert decoded.frames is not None and len(decoded.frames) == 1


def test_low_frame_rate_video_with_b_frames_keeps_a_frame_per_tick(tmp_path: Path) -> None:
    """B-frames are skipped to save decoding, unless the frames left come less often than
    the 4 per second the fingerprint samples: then every frame is decoded again."""
    low = video_only(tmp_path / "low.mp4", frames=36, rate=6, b_frames=2)
    decoded = decode_media(low)
    assert decoded.frame_times is not None
    assert len(decoded.frame_times) >= 20  # 6 s at 4 per second, the first ones may be lost
    assert np.diff(decoded.frame_times[4:]).max() <= 0.34  # every frame of a 6 fps source


def test_a_picture_held_longer_than_a_tick_fills_every_tick(tmp_path: Path) -> None:
    """Frames 0.5 s apart (a low or variable frame rate, AVI's repeated frames) are held over
    the ticks between them, so the reference has no holes for query frames to fall into;
    frames 3 s apart are a gap, not a held picture."""
    held = decode_media(video_only(tmp_path / "two_fps.mp4", frames=8, rate=2))
    assert held.frame_times is not None and held.frames is not None
    assert np.array_equal(np.round(held.frame_times * 4), np.arange(len(held.frame_times)))
    assert np.array_equal(held.frames[1], held.frames[0])  # the first picture, held
    assert not np.array_equal(held.frames[2], held.frames[1])
    sparse = decode_media(video_only(tmp_path / "sparse.mp4", frames=4, rate=Fraction(1, 3)))
    assert sparse.frame_times is not None
    assert np.allclose(sparse.frame_times, [0.0, 3.0, 6.0, 9.0])


def test_media_longer_than_the_limit_is_refused() -> None:
    """The limit bounds the memory one decoding pass holds, whatever the upload's length."""
    intro = video_fixture("intro_excerpt")
    with pytest.raises(MediaTooLong, match=r"runs longer than 15 s \(0\.25 min\)"):
        decode_media(intro, max_duration_s=15.0)
    assert decode_media(intro, max_duration_s=40.0).frames is not None


def test_a_window_of_stored_fingerprints_is_that_slice_of_them(tmp_path: Path) -> None:
    """Verification reads a reference's fingerprints over a span only: the window holds
    exactly the descriptors starting in it and the peaks of its frames."""
    duration_s, fingerprints = fingerprint_reference(fixture("knolls"))
    store = Store(tmp_path / "data")
    _, reference = store.add(title="knolls", external_id="", metadata={},
                             duration_s=duration_s, content_sha256="cd" * 32,
                             fingerprint_format="test", fingerprints=fingerprints)
    whole = store.fingerprints(reference.reference_id, "audio")
    assert np.array_equal(whole.vectors, fingerprints["audio"].vectors.astype(np.float16))
    assert np.array_equal(whole.peaks, fingerprints["audio"].peaks)
    window = store.fingerprints(reference.reference_id, "audio", (7.3, 12.0))
    inside = (whole.times >= 7.3) & (whole.times <= 12.0)
    assert 0 < inside.sum() < len(whole.times)
    assert np.array_equal(window.times, whole.times[inside])
    assert np.array_equal(window.vectors, whole.vectors[inside])
    frames = peak_frames_bands(whole.peaks)[0]
    in_span = (frames >= np.ceil(7.3 * FRAME_RATE_HZ)) & (frames <= np.floor(12.0 * FRAME_RATE_HZ))
    assert np.array_equal(window.peaks, whole.peaks[in_span])
    assert len(store.fingerprints(reference.reference_id, "video").vectors) == 0
    store.close()
