/**
 * The help tag: how an edge model says it cannot answer and hands the query to the cloud. It ends the
 * model's answer (`<unknown>help</unknown>`), as plain bytes, so any byte-level checkpoint can learn
 * it without a vocabulary change and any reader of the text can see it.
 */

export const HELP_TAG = '<unknown>help</unknown>';
/** The byte that opens the tag: banning it (a logit bias) is how an answer is kept local. */
export const HELP_TAG_FIRST_BYTE = HELP_TAG.charCodeAt(0);

/** What an edge model's reply to a task prompt is, read against the task's answer format. */
export type Reply =
  { kind: 'answer'; answer: string } | { kind: 'help'; before: string } | { kind: 'malformed'; text: string };

/** The answer format of arithmetic: an integer, nothing around it. */
export const INTEGER_ANSWER = /^-?\d+$/;

/**
 * Reads a reply (up to its first newline): `help` when it opens the help tag, whatever came before it
 * (kept in `before`); an `answer` when it is well formed; else `malformed`. Opening the tag is the
 * decision: its first byte commits to it and the rest is forced (constrained decoding, as a special
 * token would be), so a sampled reply that starts the tag and then strays still asked.
 */
export function parseReply(text: string, format: RegExp = INTEGER_ANSWER): Reply {
  const line = text.split('\n', 1)[0] as string;
  const at = line.indexOf(HELP_TAG[0] as string);
  if (at >= 0) return { kind: 'help', before: line.slice(0, at).trim() };
  const trimmed = line.trim();
  if (format.test(trimmed)) return { kind: 'answer', answer: trimmed };
  return { kind: 'malformed', text: line };
}

/**
 * A generated text with the help tag taken out: what the edge said before it, and whether it asked.
 * For serving, where any text may end with the tag; a tag that is still arriving (a prefix of it at
 * the end) is held back by `pendingTag`.
 */
export function stripHelpTag(text: string): { text: string; asked: boolean } {
  const at = text.indexOf(HELP_TAG);
  if (at < 0) return { text, asked: false };
  return { text: text.slice(0, at), asked: true };
}

/** How many bytes at the end of `text` could be the start of the help tag (to hold back while streaming). */
export function pendingTag(text: string): number {
  for (let n = Math.min(HELP_TAG.length - 1, text.length); n > 0; n--) {
    if (HELP_TAG.startsWith(text.slice(-n))) return n;
  }
  return 0;
}
