"""The plain line-mode REPL: `textgen --plain`, and the face used when not on a terminal.

On a terminal it reads with prompt_toolkit (line editing, history kept across runs); from a pipe
it reads one prompt per line. Either way model text streams to stdout and notes go to stderr, so
`printf 'Hello\\n/regen\\n' | textgen --plain > out.txt` keeps only the answers. Ctrl+C stops a
generation (the text so far is kept and saved) without leaving the REPL. The work itself is done
by `Conversation`, which the TUI shares: every finished or stopped generation is autosaved.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import create_output

from repl.conversation import Conversation
from repl.ending import Terminated, on_exit_signals
from repl.errors import TextgenError
from repl.options import (
    backend_options,
    params_from_args,
    read_chat_template,
    use_chat_template,
)
from repl.params import PARAM_NAMES, PRESETS, SamplingParams, preset
from repl.safe_text import for_stream, neutralise, printable
from repl.session import (
    Session,
    atomic_write,
    default_sessions_dir,
    load_session,
    session_filename,
)

if TYPE_CHECKING:
    from prompt_toolkit.key_binding import KeyPressEvent

    from repl.engine import StreamItem

HISTORY_FILE = ".plain-history"

HELP = """\
Type a prompt and press Enter; the model's text streams back. Ctrl+C stops a generation,
Ctrl+D (or /quit) leaves. Esc Enter inserts a new line. A line starting with // sends a
prompt that starts with /.

  /regen             another alternative for the last prompt (it becomes the selected one)
  /alt [N]           list the last prompt's alternatives, or select and show alternative N
  /continue          extend the selected alternative
  /edit N TEXT       replace turn N's prompt with TEXT and generate from there, as a new
                     branch (the old turns stay in their branch)
  /reply N TEXT      keep TEXT as turn N's reply (a new alternative, written by hand; on a
                     new branch when later chat turns answered the old reply)
  /branch [K]        list the branches (whole conversations; * marks the one shown), or
                     switch to branch K
  /set NAME VALUE    change a sampling parameter, e.g. /set temperature 0.7, /set seed none
  /preset NAME       use a preset: {presets}
  /params            show the sampling parameters
  /mode chat|complete  chat through the model's template, or continue raw text
  /save [FILE]       save now (sessions are also saved after every generation)
  /load FILE         open a saved session and continue it
  /new               start a new session
  /export md|jsonl [FILE]  write the session as Markdown or JSONL
  /model SPEC        switch model (default, models/NAME, a .gguf file, a hub id)
  /replay [N]        regenerate alternative N (default: the selected one) from its stored seed
                     and parameters, and say whether the text came out the same
  /system [TEXT]     set the chat system prompt (kept in the session); `/system off` clears
                     it; no TEXT shows it
  /help              this text
  /quit              leave
"""


def run(args: argparse.Namespace, *, interactive: bool | None = None) -> int:
    """Run the REPL until /quit or end of input. `interactive` defaults to stdin being a
    terminal; tests pass True to drive prompt_toolkit through a pipe input."""
    from repl.engine import open_backend

    sessions_dir = args.sessions_dir or default_sessions_dir()
    spec = args.model
    if args.session is not None:
        # Load (and validate) the file before the slower model load; it is never written here.
        session = load_session(args.session)
        params = params_from_args(args, base=session.params)
        if spec == "default" and session.model.get("spec", "default") != "default":
            spec = session.model["spec"]
            note(f"using the session's model {spec} (--model chooses another)")
    else:
        params = params_from_args(args)
        session = None
    template = read_chat_template(args)
    note("loading model...")
    try:
        generator = open_backend(spec, **backend_options(args))
    except Exception as exc:  # a session's model may be any broken file: never a traceback
        if spec == args.model:
            raise
        # The session's own model is gone (a moved folder): carry on with the one asked for.
        note(f"textgen: note: cannot load the session's model ({exc}); using {args.model}")
        generator = open_backend(args.model, **backend_options(args))
    use_chat_template(generator, template)
    params.check_fits(generator.info.context_length)
    if session is None:
        session = Session(model={"spec": generator.info.spec, "name": generator.info.name})
    session.params = params
    conversation = Conversation(session, sessions_dir=sessions_dir, path=args.session,
                                mode="chat" if args.chat else "complete")
    if args.session is not None and not args.chat:
        conversation.open(session, args.session)  # continue in the mode of its last turn
    if conversation.lock_note:
        note(f"textgen: note: {conversation.lock_note}")
    conversation.set_generator(generator)
    if getattr(args, "system", None) is not None:
        conversation.system = args.system
    if interactive is None:
        interactive = sys.stdin.isatty()
    repl = PlainRepl(conversation, sessions_dir, interactive=interactive,
                     engine_options=backend_options(args))
    try:
        return repl.loop()
    finally:
        conversation.close()


class PrefillLine:
    """A long prompt's prefill progress on stderr: one line rewritten in place on a terminal,
    a line per step otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = False

    def show(self, progress: Any) -> None:
        line = f"textgen: {progress.summary()} (Ctrl+C stops)"
        if self.tty:
            sys.stderr.write(f"\r{line}\x1b[K")
            sys.stderr.flush()
        else:
            note(line)
        self.shown = True

    def clear(self) -> None:
        if self.shown and self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        self.shown = False


def note(message: str) -> None:
    """A status line for the person (stderr), kept apart from the model's text (stdout).
    Never raises: a closed terminal (SIGHUP) must not stop the session from being saved."""
    with contextlib.suppress(OSError, ValueError):
        print(printable(message, sys.stderr), file=sys.stderr, flush=True)


class PlainRepl:
    def __init__(self, conversation: Conversation, sessions_dir: Path, *, interactive: bool,
                 out: TextIO | None = None, engine_options: dict[str, Any] | None = None
                 ) -> None:
        self.conversation = conversation
        self.engine_options = engine_options or {}  # how /model opens a model
        self.sessions_dir = sessions_dir
        self.interactive = interactive
        self.out = out or sys.stdout
        self.running = True
        self.generating = False
        self.terminating: int | None = None  # the signal that asked us to end
        self.refused_input = False  # a line was not UTF-8: the exit status says so
        self.commands: dict[str, Callable[[str], None]] = {
            "regen": self.cmd_regen, "alt": self.cmd_alt, "continue": self.cmd_continue,
            "edit": self.cmd_edit, "reply": self.cmd_reply, "branch": self.cmd_branch,
            "set": self.cmd_set, "preset": self.cmd_preset, "params": self.cmd_params,
            "mode": self.cmd_mode, "system": self.cmd_system, "save": self.cmd_save,
            "load": self.cmd_load, "new": self.cmd_new, "export": self.cmd_export,
            "model": self.cmd_model,
            "replay": self.cmd_replay, "help": self.cmd_help, "quit": self.cmd_quit,
            "exit": self.cmd_quit,
        }

    # --- the loop ------------------------------------------------------------------------------

    def loop(self) -> int:
        """Read and run lines until /quit, end of input or SIGTERM/SIGHUP. The exit status is
        0, 128 + the signal's number, or 1 when the session could not be saved or input was
        refused."""
        with self._signals_end_the_loop():
            try:
                info = self.conversation.generator.info if self.conversation.generator else None
                if info is not None:
                    note(f"{info.summary()} · {self.conversation.mode} mode · /help lists "
                         "commands")
                if self.conversation.session.turns:
                    count = len(self.conversation.session.turns)
                    note(f"resumed {count} turn{'s' if count > 1 else ''} from "
                         f"{self.conversation.path}{self._branch_note()}")
                for line in self._lines():
                    self.handle(line)
                    if not self.running or self.terminating:
                        break
            except Terminated:
                pass
            if self.terminating or self.conversation.save_error:
                self.conversation.save()  # a save the signal cut short, or a retry
            self._goodbye()
        if self.terminating:
            return 128 + self.terminating
        return 1 if self.conversation.save_error or self.refused_input else 0

    def _signals_end_the_loop(self) -> contextlib.AbstractContextManager[None]:
        """SIGTERM/SIGHUP: a running generation is stopped (and kept, as `cancelled`) and the
        loop ends after it; at the prompt the loop ends at once."""
        def on_signal(signum: int) -> None:
            first = self.terminating is None
            self.terminating = signum
            self.conversation.cancel()
            if first and not self.generating:
                raise Terminated(signum)

        return on_exit_signals(on_signal)

    def _lines(self) -> Iterator[str]:
        if not self.interactive:
            yield from self._piped_lines()
            return
        prompt = self._prompt_session()
        while True:
            try:
                yield prompt.prompt(f"{self.conversation.mode}> ")
            except KeyboardInterrupt:  # Ctrl+C at the prompt clears the line, like a shell
                continue
            except EOFError:
                return

    def _piped_lines(self) -> Iterator[str]:
        """Lines from a pipe, decoded as UTF-8 here (not by the locale, which may turn bad
        bytes into lone surrogates): a line that is not UTF-8 is refused with one message."""
        raw_input = getattr(sys.stdin, "buffer", None)
        if raw_input is None:  # a text stream (tests)
            for line in sys.stdin:
                yield line.rstrip("\r\n")
            return
        for number, raw in enumerate(raw_input, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.refused_input = True
                note(f"textgen: error: input line {number} is not UTF-8 text (a bad byte at "
                     f"{exc.start + 1}); skipped it")
                continue
            yield line.rstrip("\r\n")

    def _prompt_session(self) -> PromptSession[str]:
        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            event.current_buffer.insert_text("\n")

        output = None
        if not sys.stdout.isatty() and sys.stderr.isatty():
            # `textgen --plain > out.txt`: the prompt goes to the terminal, the text to the file.
            output = create_output(always_prefer_tty=True)
        return PromptSession(history=QuietFileHistory(str(self.sessions_dir / HISTORY_FILE)),
                             key_bindings=bindings, output=output)

    def handle(self, line: str) -> None:
        """One line: a /command, or a prompt for the model."""
        try:
            if line.startswith("/") and not line.startswith("//"):
                name, _, rest = line[1:].partition(" ")
                command = self.commands.get(name.strip().lower())
                if command is None:
                    raise TextgenError(f"unknown command /{name}; /help lists them.")
                command(rest.strip())
            elif line.strip():
                self.generate(self.conversation.submit(line.removeprefix("/")))
        except (TextgenError, ValueError) as exc:
            note(f"textgen: error: {exc}")

    def _goodbye(self) -> None:
        conversation = self.conversation
        if self.terminating:
            note(f"textgen: stopped by {signal.Signals(self.terminating).name}")
        if conversation.save_error:
            note(f"textgen: the session could NOT be saved: {conversation.save_error}")
        elif conversation.path is not None and conversation.session.turns:
            note(f"session saved to {conversation.path}")

    # --- streaming -----------------------------------------------------------------------------

    def generate(self, stream: Iterator[StreamItem]) -> None:
        """Print the stream as it comes; Ctrl+C cancels it (the engine stops within a token)."""
        from repl.engine import GenerationStats, Notice, Progress

        stats: GenerationStats | None = None
        ended_with_newline = True
        prefill = PrefillLine()
        self.generating = True
        with self._ctrl_c_cancels():
            try:
                for item in stream:
                    if self.terminating:  # a cancel that came before the engine was ready
                        self.conversation.cancel()
                    if isinstance(item, str):
                        prefill.clear()
                        self.out.write(for_stream(item, self.out))
                        self.out.flush()
                        ended_with_newline = item.endswith("\n")
                    elif isinstance(item, Notice):
                        if not ended_with_newline:
                            self.out.write("\n")
                            self.out.flush()
                            ended_with_newline = True
                        note(f"textgen: note: {item.message}")
                    elif isinstance(item, Progress):
                        prefill.show(item)
                    elif isinstance(item, GenerationStats):
                        stats = item
            except (TextgenError, ValueError):
                raise
            except Exception as exc:  # the text so far is already recorded and saved
                raise TextgenError(f"generation failed: {exc}") from exc
            finally:
                self.generating = False
                stream.close()  # type: ignore[attr-defined]
                prefill.clear()
                if not ended_with_newline:
                    self.out.write("\n")
                    self.out.flush()
        if stats is not None:
            turn = self.conversation.last_turn
            alt = f" · alternative {turn.selected + 1}/{len(turn.completions)}" if (
                turn is not None and len(turn.completions) > 1) else ""
            stopped = " (stopped)" if stats.finish_reason == "cancelled" else ""
            note(f"[{stats.summary()}{alt}]{stopped}")

    @contextlib.contextmanager
    def _ctrl_c_cancels(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_interrupt(signum: int, frame: object) -> None:
            self.conversation.cancel()

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            with _no_ctrl_echo():
                yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # --- commands ------------------------------------------------------------------------------

    def cmd_regen(self, rest: str) -> None:
        self.generate(self.conversation.regenerate())

    def cmd_continue(self, rest: str) -> None:
        self.generate(self.conversation.continue_())

    def cmd_edit(self, rest: str) -> None:
        number, _, text = rest.partition(" ")
        count = len(self.conversation.session.turns)
        if not number.isdigit() or not text.strip():
            raise TextgenError("usage: /edit N TEXT, e.g. /edit 1 Tell me about rain; turns "
                               f"are numbered from 1 (this branch has {count}).")
        self.generate(self.conversation.edit(int(number) - 1, text))
        turn = self.conversation.session.turns[int(number) - 1]
        note(f"[turn {number} is now branch {turn.branch + 1}/{turn.branch_count}; "
             "/branch lists them]")

    def cmd_reply(self, rest: str) -> None:
        number, _, text = rest.partition(" ")
        if not number.isdigit() or not text:
            raise TextgenError("usage: /reply N TEXT: keep TEXT as turn N's reply.")
        self.conversation.edit_reply(int(number) - 1, text)
        turn = self.conversation.session.turns[int(number) - 1]
        branch = (f" on branch {turn.branch + 1}/{turn.branch_count}"
                  if turn.branch_count > 1 and len(turn.completions) == 1 else "")
        note(f"[turn {number}: alternative {turn.selected + 1}/{len(turn.completions)}, "
             f"written by hand{branch}]")
        self._report_save_error()

    def cmd_branch(self, rest: str) -> None:
        session = self.conversation.session
        if not session.turns:
            raise TextgenError("there is no prompt yet; submit one first.")
        if not rest:
            for number, branch in enumerate(session.branches(), 1):
                shown = " → ".join(_short(t.prompt, 24) for t in branch.turns)
                self._say(f"{'*' if branch.current else ' '} {number}: {_short(shown, 100)}")
            return
        if not rest.isdigit():
            raise TextgenError(f"/branch takes a branch number, not {rest!r}.")
        branch = self.conversation.switch_to(int(rest))
        note(f"[branch {rest}/{len(session.branches())}: {len(branch.turns)} turn"
             f"{'' if len(branch.turns) == 1 else 's'}]")
        self._report_save_error()
        turn = self.conversation.last_turn
        if turn is not None:
            self._say(f"{turn.mode}> {turn.prompt}")
            if turn.completion is not None:
                self._say(turn.completion.text)

    def cmd_alt(self, rest: str) -> None:
        turn = self.conversation.last_turn
        if turn is None or not turn.completions:
            raise TextgenError("there is no prompt yet; submit one first.")
        if not rest:
            for i, completion in enumerate(turn.completions):
                mark = "*" if i == turn.selected else " "
                text = neutralise(" ".join(completion.text.split()))
                self._say(f"{mark} {i + 1}: {text[:70]}{'…' if len(text) > 70 else ''}")
            return
        try:
            number = int(rest)
        except ValueError:
            raise TextgenError(f"/alt takes an alternative number, not {rest!r}.") from None
        completion = self.conversation.select(number - 1)
        self._say(completion.text)
        note(f"[alternative {number}/{len(turn.completions)} selected]")
        self._report_save_error()

    def cmd_set(self, rest: str) -> None:
        name, _, value = rest.partition(" ")
        if not name or (not value.strip() and name.replace("-", "_") not in ("seed", "stop")):
            raise TextgenError("usage: /set NAME VALUE, e.g. /set temperature 0.7; "
                               f"names: {', '.join(PARAM_NAMES)}.")
        params = self.conversation.params.with_text(name, value)
        self._use_params(params)
        key = name.strip().replace("-", "_")
        note(f"{key} = {getattr(params, key)!r}")

    def cmd_preset(self, rest: str) -> None:
        if not rest:
            raise TextgenError(f"usage: /preset NAME; one of {', '.join(PRESETS)}.")
        self._use_params(preset(rest))
        note(f"preset {rest}: {self._describe_params()}")

    def cmd_params(self, rest: str) -> None:
        for name, value in self.conversation.params.to_dict().items():
            self._say(f"{name:22} {value!r}")

    def cmd_system(self, rest: str) -> None:
        conversation = self.conversation
        if rest:
            conversation.system = "" if rest == "off" else rest
            conversation.save()
        if conversation.system:
            note(f"system prompt: {neutralise(conversation.system)}"
                 + ("" if conversation.mode == "chat" else " (used in chat mode: /mode chat)"))
        else:
            note("no system prompt")

    def cmd_mode(self, rest: str) -> None:
        if rest not in ("chat", "complete"):
            raise TextgenError("usage: /mode chat or /mode complete.")
        self.conversation.mode = rest  # type: ignore[assignment]
        note(f"{rest} mode")

    def cmd_save(self, rest: str) -> None:
        conversation = self.conversation
        if rest:
            target = Path(rest).expanduser()
            if target.exists() and target != conversation.path:
                raise TextgenError(f"{target} already exists; choose another name.")
            if error := conversation.save_as(target):  # else it keeps saving where it did
                raise TextgenError(error)
        else:
            if not conversation.session.turns and conversation.path is None:
                raise TextgenError("nothing to save yet; submit a prompt first.")
            if error := conversation.save():
                raise TextgenError(error)
        note(f"saved to {conversation.path}")

    def cmd_load(self, rest: str) -> None:
        if not rest:
            raise TextgenError("usage: /load FILE")
        path = Path(rest).expanduser()
        self._keep_unsaved()
        session = load_session(path)
        current = self.conversation.generator
        if current is not None:
            session.params.check_fits(current.info.context_length)
        self.conversation.open(session, path)
        if self.conversation.lock_note:
            note(f"textgen: note: {self.conversation.lock_note}")
            self.conversation.lock_note = None
        if current is not None and session.model.get("spec") != current.info.spec:
            note(f"this session was made with {session.model.get('spec')}; generating "
                 f"with {current.info.spec} from now on (/model SPEC switches).")
            self.conversation.set_generator(current)
        note(f"loaded {len(session.turns)} turn{'' if len(session.turns) == 1 else 's'} "
             f"from {path}{self._branch_note()}")
        turn = self.conversation.last_turn
        if turn is not None and turn.completion is not None:
            self._say(f"{turn.mode}> {turn.prompt}")
            self._say(turn.completion.text)

    def cmd_new(self, rest: str) -> None:
        self._keep_unsaved()
        generator = self.conversation.generator
        model = ({"spec": generator.info.spec, "name": generator.info.name} if generator
                 else dict(self.conversation.session.model))
        system = self.conversation.system  # a setting, like the params: it carries over
        self.conversation.open(Session(model=model, params=self.conversation.params), None)
        self.conversation.system = system
        note("new session")

    def cmd_export(self, rest: str) -> None:
        from repl.export import FORMATS, export

        fmt, _, target = rest.partition(" ")
        if fmt not in FORMATS:
            raise TextgenError("usage: /export md|jsonl [FILE]")
        if target.strip():
            path = Path(target.strip()).expanduser()
        else:
            base = self.conversation.path or (self.sessions_dir /
                                              session_filename(self.conversation.session))
            path = base.with_suffix(f".{fmt}")
        atomic_write(path, export(self.conversation.session, fmt).encode("utf-8"))
        note(f"exported to {path}")

    def cmd_model(self, rest: str) -> None:
        from repl.engine import open_backend

        if not rest:
            raise TextgenError("usage: /model SPEC (default, models/NAME, a .gguf file, gpt2)")
        note("loading model...")
        try:
            generator = open_backend(rest, **self.engine_options)
        except (TextgenError, ValueError):
            raise
        except Exception as exc:  # whatever a broken model file raises, the REPL carries on
            raise TextgenError(f"{rest}: cannot load the model: {type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]}") from None
        self.conversation.params.check_fits(generator.info.context_length)
        old = self.conversation.generator
        self.conversation.set_generator(generator)
        if old is not None:
            old.close()  # free the previous model's memory now, not at the next collection
        note(generator.info.summary())

    def cmd_replay(self, rest: str) -> None:
        """Not recorded: it only shows that a stored completion can be made again exactly."""
        conversation = self.conversation
        turn = conversation.last_turn
        if turn is None or not turn.completions:
            raise TextgenError("there is no prompt yet; submit one first.")
        try:
            index = int(rest) - 1 if rest else turn.selected
        except ValueError:
            raise TextgenError(f"/replay takes an alternative number, not {rest!r}.") from None
        turn_index = len(conversation.session.turns) - 1
        requests = [conversation.replay_request(turn_index, index)]
        completion = turn.completions[index]
        requests += [conversation.replay_continuation_request(turn_index, index, k)
                     for k in range(len(completion.continuations))]
        generator = conversation.generator
        if generator is None or generator.info.spec != completion.model:
            raise TextgenError(f"alternative {index + 1} was made with {completion.model}; "
                               f"/model {completion.model} first.")
        from repl.engine import GenerationStats

        pieces: list[str] = []
        finish = None
        with self._ctrl_c_cancels():
            try:
                for request in requests:
                    for item in generator.stream(request):
                        if isinstance(item, str):
                            pieces.append(item)
                            self._write(item)
                        elif isinstance(item, GenerationStats):
                            finish = item.finish_reason
                    if finish == "cancelled":
                        break
            except (TextgenError, ValueError):
                raise
            except Exception as exc:  # e.g. a token id this model does not have
                raise TextgenError(f"replay failed: {exc}") from exc
            finally:
                self.out.write("\n")
                self.out.flush()
        replayed = "".join(pieces)
        # A forced alternative's stream starts after its kept text and forced token.
        same = (replayed == completion.text if completion.forced is None
                else completion.text.endswith(replayed))
        if finish == "cancelled":
            note("[replay stopped]")
        elif same:
            note(f"[replay of alternative {index + 1}: identical to the stored text]")
        else:
            note(f"[replay of alternative {index + 1}: DIFFERS from the stored text "
                 "(another device, dtype or library version?)]")

    def cmd_help(self, rest: str) -> None:
        self.out.write(HELP.format(presets=", ".join(PRESETS)))
        self.out.flush()

    def cmd_quit(self, rest: str) -> None:
        self.running = False

    # --- helpers -------------------------------------------------------------------------------

    def _use_params(self, params: SamplingParams) -> None:
        generator = self.conversation.generator
        if generator is not None:
            params.check_fits(generator.info.context_length)
        self.conversation.params = params
        if self.conversation.session.turns:  # so a resumed session gets them back
            self.conversation.save()
            self._report_save_error()

    def _describe_params(self) -> str:
        from repl.export import describe_params

        return describe_params(self.conversation.params)

    def _say(self, text: str) -> None:
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        """Text for stdout: exact into a file or pipe, control sequences shown (not obeyed)
        on a terminal."""
        self.out.write(for_stream(text, self.out))
        self.out.flush()

    def _keep_unsaved(self) -> None:
        try:
            self.conversation.keep_unsaved()
        except TextgenError as exc:
            raise TextgenError(f"{exc} (/save FILE writes it elsewhere)") from None

    def _branch_note(self) -> str:
        branches = self.conversation.session.branches()
        if len(branches) == 1:
            return ""
        shown = next(i for i, b in enumerate(branches, 1) if b.current)
        return f" (branch {shown} of {len(branches)}; /branch lists them)"

    def _report_save_error(self) -> None:
        if self.conversation.save_error:
            note(f"textgen: {self.conversation.save_error}")


def _short(text: str, width: int) -> str:
    """`text` on one line, shown safely, cut to `width` characters."""
    text = neutralise(" ".join(text.split()))
    return text if len(text) <= width else text[:width - 1] + "…"


@contextlib.contextmanager
def _no_ctrl_echo() -> Iterator[None]:
    """Keep the terminal from echoing "^C" into the middle of the streamed text."""
    try:
        import termios
    except ImportError:  # Windows
        yield
        return
    try:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):  # not a terminal: a pipe, a test's StringIO
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHOCTL
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


class QuietFileHistory(FileHistory):
    """Prompt history in a file; a folder that cannot be written only loses the history."""

    def load_history_strings(self) -> Iterable[str]:
        try:
            return list(super().load_history_strings())
        except OSError:
            return []

    def store_string(self, string: str) -> None:
        try:
            Path(self.filename).parent.mkdir(parents=True, exist_ok=True)
            super().store_string(string)
        except OSError:
            pass
