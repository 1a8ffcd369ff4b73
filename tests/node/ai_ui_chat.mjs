// Runs one scenario of ai_ui_scenarios.mjs in Node and prints what the chat held, as JSON.
//
// Usage: node ai_ui_chat.mjs <scenario> <api URL, e.g. http://127.0.0.1:8000/v1/ui/chat> [arg...]
import { scenarios } from "./ai_ui_scenarios.mjs";

const [scenario, api, ...args] = process.argv.slice(2);
const all = scenarios(api);
const run = all[scenario];
if (!run) {
  console.error(`unknown scenario ${scenario}; one of ${Object.keys(all).join(", ")}`);
  process.exit(2);
}
console.log(JSON.stringify(await run(...args)));
