// The live-transcription page's adapter for AssemblyAI Universal Streaming v3 (see sttgate/web/static/demo.js):
// binary PCM frames, `Terminate` to end, `Turn` messages carry the transcript.

export default function adapter(sampleRate) {
  return {
    query: { sample_rate: String(sampleRate), encoding: "pcm_s16le", format_turns: "true" },
    encode: (pcm) => pcm.buffer, // binary frames, exactly the PCM bytes
    minFrameMs: 50, // the provider closes the session (3007) on a frame under 50 ms
    endMessage: () => JSON.stringify({ type: "Terminate" }),
    closesAfterEnd: true, // it closes the session after `Termination`: the page waits for that
    // Each decoder returns {kind: "partial"|"final"|"ended"|"error"|"ignore", key?, text?}.
    decoder() {
      return (msg) => {
        if (msg.type === "Turn") {
          const words = (msg.words || []).map((w) => w.text).join(" ");
          const text = msg.end_of_turn ? msg.transcript : words || msg.transcript;
          return { kind: msg.end_of_turn ? "final" : "partial", key: `turn-${msg.turn_order}`, text };
        }
        if (msg.type === "Termination") return { kind: "ended" };
        if (msg.type === "Error" || (msg.error && !msg.type)) return { kind: "error", text: msg.error };
        return { kind: "ignore" };
      };
    },
  };
}
