"""OpenAI's own Python client against `singlepoint serve`'s transcription endpoint:
`client.audio.transcriptions.create` on every speech clip, 8 at a time from threads, each
transcript equal to tests/data/speech/expected_transcripts.json (the telephone-noise clip,
where the VAD finds no speech, gives no text); every response_format (json, text, srt, vtt,
verbose_json); a repeated file answered from the cache; a non-audio file, a truncated one, a
non-English language and an unknown model raise the client's own errors with the reason; the
VAD endpoint's segments within 50 ms of tests/data/speech/expected_segments.json.
scripts/test runs it after the Rust tests.

Usage: python3 tests/compat/openai_speech_check.py PATH/TO/singlepoint
"""
import concurrent.futures
import json
import os
import sys
import urllib.request

import openai

import serve

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
binary = os.path.abspath(sys.argv[1])
speech = os.path.join(root, "tests/data/speech")
expected = json.load(open(os.path.join(speech, "expected_transcripts.json")))
segments = json.load(open(os.path.join(speech, "expected_segments.json")))


def clip(entry):
    return os.path.join(speech, os.path.basename(entry["file"]))


# Memory only: a repeated file is answered from the cache, nothing persists between runs.
proc, address = serve.start(binary, ["--cache-disk", "0"], root)
try:
    client = openai.OpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0)

    def transcribe(entry):
        with open(clip(entry), "rb") as f:
            return client.audio.transcriptions.create(model="whisper-1", file=f)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(transcribe, expected["clips"]))
    for entry, answer in zip(expected["clips"], answers):
        want = "" if entry["file"].endswith("nonspeech_telephone_noise.wav") else entry["transcript"]
        assert answer.text == want, (entry["file"], answer.text, want)
    print(f"openai: {len(answers)} clips transcribed 8 at a time, every transcript equal to the reference")

    jfk = next(e for e in expected["clips"] if e["file"].endswith("jfk.wav"))
    with open(clip(jfk), "rb") as f:
        data = f.read()
    text = client.audio.transcriptions.create(model="whisper-tiny.en", file=("jfk.wav", data),
                                              response_format="text")
    assert text.strip() == jfk["transcript"], text
    srt = client.audio.transcriptions.create(model="whisper-1", file=("jfk.wav", data), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:11,000\n" + jfk["transcript"]), srt
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("jfk.wav", data), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:11.000\n" + jfk["transcript"]), vtt
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("jfk.wav", data),
                                                 response_format="verbose_json", language="en")
    assert verbose.text == jfk["transcript"] and verbose.duration == 11.0, verbose
    assert verbose.segments[0].tokens == jfk["token_ids"], verbose.segments[0]
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("jfk.wav", data))
    assert raw.headers["x-singlepoint-source"] == "cache", dict(raw.headers)
    print("openai: text, srt, vtt and verbose_json; the repeated file answered from the cache")

    for kwargs, error, want in [
        (dict(file=("notes.wav", b"this is not audio")), openai.BadRequestError, "not an audio file"),
        (dict(file=("cut.wav", data[: len(data) // 3])), openai.BadRequestError, "truncated"),
        (dict(file=("jfk.wav", data), language="de"), openai.BadRequestError, "English-only"),
        (dict(file=("empty.wav", b"")), openai.BadRequestError, "empty"),
    ]:
        try:
            client.audio.transcriptions.create(model="whisper-1", **kwargs)
            sys.exit(f"accepted: {kwargs}")
        except error as e:
            assert want in str(e), (want, str(e))
    try:
        client.audio.transcriptions.create(model="large-v3", file=("jfk.wav", data))
        sys.exit("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert "whisper-tiny.en" in str(e), e
    print("openai: bad audio, other languages and unknown models raise the client's errors with the reason")

    for entry in segments["clips"]:
        with open(clip(entry), "rb") as f:
            req = urllib.request.Request(f"http://{address}/v1/audio/vad", data=f.read(), method="POST")
        with urllib.request.urlopen(req) as r:
            got = json.loads(r.read())["segments"]
        want = entry["segments_seconds"]
        assert len(got) == len(want), (entry["file"], got, want)
        for g, w in zip(got, want):
            assert abs(g["start"] - w[0]) <= 0.05 and abs(g["end"] - w[1]) <= 0.05, (entry["file"], g, w)
    print(f"vad: segments of {len(segments['clips'])} clips within 50 ms of silero-vad's")
finally:
    proc.terminate()
    proc.wait(timeout=60)
