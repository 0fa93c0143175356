// The live-transcription page's adapter for Deepgram live streaming (see sttgate/web/demo.js):
// binary linear16 frames, `CloseStream` to end, `Results` messages carry the transcript, `Metadata` comes last.

export default function adapter(sampleRate) {
  return {
    query: {
      model: "nova-3",
      encoding: "linear16",
      sample_rate: String(sampleRate),
      interim_results: "true",
      punctuate: "true",
    },
    encode: (pcm) => pcm.buffer, // binary frames, exactly the PCM bytes
    minFrameMs: 0,
    endMessage: () => JSON.stringify({ type: "CloseStream" }),
    closesAfterEnd: true, // it closes the session after `Metadata`: the page waits for that
    // Each decoder returns {kind: "partial"|"final"|"ended"|"error"|"ignore", key?, text?}.
    decoder() {
      let segment = 0; // interim results revise the current segment until its final arrives
      return (msg) => {
        if (msg.type === "Results") {
          const alternative = (msg.channel && msg.channel.alternatives && msg.channel.alternatives[0]) || {};
          const text = alternative.transcript || "";
          if (!msg.is_final) return { kind: "partial", key: `segment-${segment}`, text };
          return { kind: "final", key: `segment-${segment++}`, text };
        }
        if (msg.type === "Metadata") return { kind: "ended" }; // the session summary: nothing follows
        if (msg.type === "Error") return { kind: "error", text: msg.description || msg.variant };
        return { kind: "ignore" };
      };
    },
  };
}
