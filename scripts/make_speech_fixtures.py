"""Writes the speech tests' fixtures from the clips in tests/data/speech (run from the repository root):

    python3 scripts/make_speech_fixtures.py

- tests/data/speech/formats/: jfk.wav as FLAC, MP3 (libmp3lame 64 kb/s), Ogg Vorbis (q 4) and a 44.1 kHz stereo WAV
  (the mono signal in both channels, resampled by ffmpeg's default swr), made with Debian's ffmpeg, for decoding tests;
- tests/data/speech/mel/NAME.f32le: the reference log-mel features [80, 3000] (little-endian f32, row-major) of
  jfk.wav and cards_001.wav, computed by models/whisper-tiny-en/whisper_onnx.py's log_mel (numpy), the recipe the
  Rust front end must match within 1e-4.
"""
import os, subprocess, sys, wave
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEECH = os.path.join(ROOT, "tests", "data", "speech")
sys.path.insert(0, os.path.join(ROOT, "models", "whisper-tiny-en"))

# whisper_onnx imports onnxruntime and tokenizers at module level; only log_mel is used here.
import whisper_onnx  # noqa: E402

fmt = os.path.join(SPEECH, "formats"); os.makedirs(fmt, exist_ok=True)
src = os.path.join(SPEECH, "jfk.wav")
for name, args in [("jfk.flac", ["-c:a", "flac"]), ("jfk.mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
                   ("jfk.ogg", ["-c:a", "libvorbis", "-q:a", "4"]),
                   ("jfk_44k_stereo.wav", ["-ac", "2", "-ar", "44100", "-c:a", "pcm_s16le"])]:
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", src, "-map_metadata", "-1", "-fflags", "+bitexact",
                    *args, os.path.join(fmt, name)], check=True)
mel = os.path.join(SPEECH, "mel"); os.makedirs(mel, exist_ok=True)
for clip in ["jfk", "cards_001"]:
    features = whisper_onnx.log_mel(whisper_onnx.read_wav16k(os.path.join(SPEECH, clip + ".wav")))[0]
    assert features.shape == (80, 3000)
    features.astype("<f4").tofile(os.path.join(mel, clip + ".f32le"))
print("written", sorted(os.listdir(fmt)), sorted(os.listdir(mel)))
