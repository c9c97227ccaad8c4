"""CI seeds that reproduce a known, still-open hole of issue #10, as ``seed: reason``.

Each entry is an ``xfail(strict=True)``: when the hole is fixed the seed passes, the
strict xfail fails, and the entry must go. Add a seed only after showing that it fails
for that hole and nothing else.
"""

from __future__ import annotations

# Seed 142 was here: on main 787c9ec a crash between CompleteMultipartUpload and the
# metadata of a truncated stream left the object without a metadata document. After the
# merges of core's later fixes and the trust wrapper it runs clean (the schedule it draws
# differs too, so the variant is not proven gone: the soak still finds such seeds).
# Seed 74393 was here: a one-part stream's file replaced twice while down, the second
# replacement given the first file's inode number at the same path, taken for the recording
# with its header patched (a one-part stream at its own path was trusted) and its part
# re-sent from the stranger's bytes. Closed on 2026-12-08: part 1's digest record keeps the
# CRC32C of its second half, past any header (core.hashing.header_window), and core.resume.recording
# judges a one-part stream by them (tests/pipeline/test_holes.py holds the deterministic
# case; 14010533 is its soak-found seed).
# The four seeds the soak of issue #25 found here (2000380, 2001351, 2001690, 2001974: RPO
# with the other party) were closed on 2026-12-07 and are regression seeds below, as are
# the ones its later soaks found (2010391, 2010731, 2022346, 2029967, 9004048, 110014xx-
# 110067xx): each was a data-path fix or an invariant that judged a superseded byte lost.
KNOWN_HOLES: dict[int, str] = {}
# 14010533 was here until 2026-12-08, hole 74393's class (below, a regression now).

# Seeds that once failed and were triaged, run by CI besides its range (a seed names its
# schedule only while schedule.py draws the same way: re-triage them if it changes).
REGRESSION_SEEDS: dict[int, str] = {
    14010533: "hole 74393's class (found by the soak of 31485d9): a one-part stream's file "
              "replaced twice while cefmp4 was down, the second file given the first one's "
              "inode number at the same path, was taken for the recording (a one-part "
              "stream at its own path was trusted). Closed: part 1's record keeps the "
              "CRC32C of its bytes past the header, which a header patch leaves and "
              "another file does not have (core.resume.recording asks it)",
    14013853: "RPO: a kept object's part 11 filled from tail segments shipped before and "
              "after a faststart rewrite: the invariant judged only a last chunk by the "
              "stream's segments",
    11002321: "RPO, host loss: part-less duplicate uploads of a stream (lost "
              "CreateMultipartUpload answers) whose 'data' is the stream's tail segments, "
              "which the stream's own parts in the salvaged object hold as the recording "
              "later wrote them (a header patch): the invariant judged them lost",
    9004048: "RPO and a host loss: a stream's parts checkpointed, its record's writes "
             "failing so the checkpoint never learnt the upload id, the upload purged by S3 "
             "before any salvage: the invariant now knows S3 forgot it (runner.purged_keys)",
    11001459: "RPO: truncated with part 18 held back and parts 19-37 in S3, a tail segment "
              "holding part 18's bytes: finalize handed core.ending.kept_object only the "
              "contiguous parts, so 19-37 (1.2 MB S3 held) were in no object",
    11005867: "the same with a host loss",
    11006656: "RPO: truncated and regrown while a Complete was held back 20 s: the retry "
              "verified the regrown file and re-sent part 1 over the bytes S3 held; the "
              "Complete is watched like a held-back part now (finalize._complete_watching)",
    11005607: "RPO: replaced; the kept object's last chunk is tail segments shipped before "
              "and after a header patch (the invariant judged it as one version)",
    11006740: "the same after a faststart rewrite and a delete",
    2010731: "the same after a header patch, a crash and the inode taken by a new file "
             "(it was a known hole: part 1's first bytes in no object)",
    2022346: "RPO: a finalizing stream's own Complete of its first parts went through before "
             "a crash, the file grew: finish_kept publishes that object (it failed the "
             "stream, 'an object not made of the checkpointed parts', without metadata)",
    2010391: "RPO: truncated, part 3 lost to a restarted upload and its bytes held by tail "
             "segments: the kept object fills it from them (core.ending.kept_object)",
    2029967: "RPO: the same after a replace (384 KiB that S3 held was in no object)",
    2001974: "RPO: orphan uploads with no part (CreateMultipartUpload answers lost) at the "
             "key of a stream whose tail segments do not start at byte 0: empty, aborted "
             "(core.salvage.plan), not left open for ever",
    2001351: "RPO: a finalizing stream rewritten while down ends truncated; its new end is "
             "checkpointed over the idle one before the Complete, so a crash after it is "
             "never resumed and published as 'complete' (core.resume.resuming)",
    2000380: "RPO: a truncated stream's last part made of its tail segments sent to an "
             "upload S3 had purged: the NoSuchUpload is a gone upload (finish_kept), not a "
             "stream failure on every restart",
    2001690: "RPO: the same NoSuchUpload from a claim's start task, which died of it",
    300: "an idle end (complete) checkpointed, the file grown, a crash, the file deleted "
         "while down: the kept prefix must not be called complete (finish_kept)",
    310: "a truncated stream completed from parts 1-5 with part 7 checkpointed too: the "
         "restart must confirm that object (reconcile), not fail the stream without metadata",
    449: "a Complete held back 20 s by a timeout while the file grew and was deleted: "
         "the retry must verify again, not complete a state the file left (finalize)",
    481: "the same with a rewrite and a replace during the held-back Complete; since the "
         "digest fix of durable_prefix also: a part whose checkpoint answer was lost, "
         "cancelled by a truncation, left out of the kept object (upload.cancel_beyond)",
    941: "hole 1 of #10, found by a targeted crash 7 steps after stream_truncated: the "
         "truncated stream's end must survive the restart, not be finalized as idle",
    904: "hole 1 again (a targeted crash after stream_truncated, with faults)",
    891: "hole 1 put back made its resumed finalize 'complete' an object of no file state",
    1627: "replaced while the completed stream's metadata waited on a slow store: the "
          "growth after Complete is a new stream's, not the held one's (invariant, §2.4)",
    2403: "truncated twice, the second stream again cut inside part 1: two 'truncated' "
          "objects of the same prefix, as §2.4 says (invariant)",
    9252: "an empty file's object written, a crash before its metadata, the file gone: "
          "the restart publishes it (finish_kept)",
    11305: "the same as 9252, found by the soak of db37c7d",
    3681: "truncated below a checkpointed part, then deleted while that stream finished: "
          "it ends with what was uploaded (invariant, §2.4)",
    4050: "truncated, then replaced while that stream finished, its upload purged by S3 "
          "(invariant, §2.4)",
    30927: "a shrink that left every durable byte, a rewrite in part 1, then a replace: "
           "the held file's final bytes are the object (invariant: not a truncation)",
    35582: "deleted while down, its inode number taken by a new file elsewhere: the stream "
           "ends with what S3 holds, the new file is a stream of its own (resume)",
    35920: "truncated and regrown while down, then replaced: 'truncated' checkpointed by the "
           "replace is not the shrink seen (invariant: stream_truncated logged)",
    41106: "truncated and grown back while an S3 timeout held finalize's tail part: seen "
           "while waiting (upload.drain_watching), the uploaded parts kept",
    41403: "the same, with a crash before that finalize went on: the truncated end is "
           "checkpointed before the parts below the cut are waited for",
    54164: "an empty recording's object written, a crash before its metadata, the file "
           "grown while down: that object is published, the growth is a new stream",
    56196: "a truncation seen, its checkpoint held back by the store, a crash, the file "
           "regrown while down: the resumed stream finds none of its parts, keeps them",
    80950: "the same, cut inside the last part only: the first parts still match, the last "
           "does not, and its bytes in S3 are kept (core.resume.resuming)",
    74393: "was a known hole (see above): its schedule no longer reaches it",
    104371: "a stream ended as rewritten while down, its file replaced before the new "
            "stream opened it: the new stream is of the descriptor held, and a claim opens "
            "the inode it claimed (two complete objects of one recording before)",
    111933: "the same class on 04dd82b (two complete objects of one recording)",
}

# Issue #25 with a racing other party (``python -m tests.sim --racing SEED``): another host's
# ``cefmp4 salvage --older-than X`` with X shorter than the owner's quiet spells (1-30 s),
# so it takes uploads whose owner is alive but has not added to them for X, which the age
# rule of SPEC §2.19 allows. CI runs both with ``racing``: a hole is an
# ``xfail(strict=True)`` like KNOWN_HOLES; once it runs clean it moves to the regressions,
# which must run clean.
RACING_HOLES: dict[int, str] = {}
RACING_REGRESSION_SEEDS: dict[int, str] = {
    13000561: "part 1 lost (BadDigest), part 2 in S3, the file deleted: the failing stream "
              "releases its upload to salvage instead of aborting it, and salvage leaves an "
              "upload without part 1 to the operator (it may stay open)",
    13000015: "an interrupted salvage's marker of a one-part upload whose owner then "
              "completed the same part and published 'complete': the sweeper resuming the "
              "marker relabelled it 'salvaged'; the owner's document now stands "
              "(core.salvage.published_by_owner)",
    3000062: "RPO and a racing party: a deleted file's 851,968 durably stored bytes were in "
             "no object; a part lost to a restarted upload is filled from tail segments now",
    7000219: "three uploads of one stream (CreateMultipartUpload answers lost), the host "
             "lost: the one-part orphan was salvaged first and its object blocked the real "
             "upload (5 parts) for ever; the biggest is carried out first now, and a plan "
             "found changed on its second look is replaced by that look's",
    37: "a stale Complete: the survey saw the upload idle 3 s, the owner added part 12, "
        "the Complete 0.07 s later dropped it ((c), judged when S3 completed); the owner "
        "then published the salvaged prefix as its own 'complete' object (the salvaged "
        "metadata overwritten; the object equals no state of the file). Closed by 2e5942d",
    41: "the salvaged prefix published as 'complete' by its owner (no stale plan); 2e5942d",
    63: "a stale abort: the plan (no part yet) carried out 20 s after the survey, after an "
        "earlier step's request timed out; the owner had added 4 parts meanwhile and its "
        "file was replaced: 327680 B that S3 held were lost (streams.salvage.carry_out); "
        "2e5942d",
}
