// Reads JSON {unescape: [...], quote: [...], visible: [...], events: [...]} on
// stdin and writes what reactor/web/static/text.js makes of each, for
// tests/test_web_text.py to compare with the Python it ports.
import { parseEvent, quote, unescapeWire, visibleParts } from "../../reactor/web/static/text.js";

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const cases = JSON.parse(input);
  process.stdout.write(JSON.stringify({
    unescape: cases.unescape.map(unescapeWire),
    quote: cases.quote.map(quote),
    visible: cases.visible.map((text) => visibleParts(text).map((p) => [p.text, p.token])),
    events: cases.events.map(parseEvent),
  }));
});
