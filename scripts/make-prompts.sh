#!/usr/bin/env bash
# Makes the prompt recordings in audio/<lang>/<name>.wav: 16-bit PCM, 8 kHz, mono.
#
# Synthesised with espeak-ng (good enough until someone records a human voice), then
# converted with sox: band-limited to the telephone band, peak-normalised to -3 dBFS (G.711
# has headroom to +3.14 dBm0; speech peaks at -3 dBFS keep its average around -20 dBm0),
# with 200 ms of silence before and 300 ms after so a far end's jitter buffer or AGC does not
# eat the first syllable.
#
# Usage: scripts/make-prompts.sh [output-dir]      (default: audio/ next to this script)
# Needs: espeak-ng, sox.
#
# The runtime loads audio/<lang>/<name>.wav with media::Prompt::from_wav(name, bytes).
# Names: greeting, pin, challenge, thanks, fraud-ack, goodbye, no-input, invalid.
set -euo pipefail

out="${1:-$(cd "$(dirname "$0")/.." && pwd)/audio}"
for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null || { echo "make-prompts: $tool is not installed" >&2; exit 1; }
done

# espeak-ng voice per language; speed in words per minute (slower than the default 175:
# these are instructions heard once, over a phone line).
declare -A VOICE=([en]=en-us [es]=es [fr]=fr-fr [de]=de)
SPEED=150

say() { # lang name text
    local lang="$1" name="$2" text="$3"
    local dir="$out/$lang" tmp
    mkdir -p "$dir"
    tmp="$(mktemp --suffix .wav)"
    espeak-ng -v "${VOICE[$lang]}" -s "$SPEED" -w "$tmp" "$text"
    sox -V1 "$tmp" -r 8000 -c 1 -b 16 -e signed-integer "$dir/$name.wav" \
        gain -6 highpass 300 lowpass 3400 gain -n -3 pad 0.2 0.3
    rm -f "$tmp"
    echo "$dir/$name.wav"
}

say en greeting  "Hello. This is a sign-in check. If you are signing in, press the pound key. If you did not try to sign in, press zero, then pound."
say en pin       "Please enter your PIN, followed by the pound key."
say en challenge "Please enter the digits shown on your screen, followed by the pound key."
say en thanks    "Thank you. Your sign-in is confirmed."
say en fraud-ack "Your report has been recorded. The sign-in was denied."
say en goodbye   "Goodbye."
say en no-input  "Sorry, we did not receive your answer."
say en invalid   "Sorry, that is not correct."

say es greeting  "Hola. Esta es una verificación de inicio de sesión. Si está iniciando sesión, pulse la tecla almohadilla. Si no intentó iniciar sesión, pulse cero y luego almohadilla."
say es pin       "Introduzca su PIN, seguido de la tecla almohadilla."
say es challenge "Introduzca los dígitos que aparecen en su pantalla, seguidos de la tecla almohadilla."
say es thanks    "Gracias. Su inicio de sesión está confirmado."
say es fraud-ack "Su aviso ha quedado registrado. El inicio de sesión ha sido denegado."
say es goodbye   "Adiós."
say es no-input  "Lo sentimos, no hemos recibido su respuesta."
say es invalid   "Lo sentimos, no es correcto."

say fr greeting  "Bonjour. Ceci est une vérification de connexion. Si vous êtes en train de vous connecter, appuyez sur la touche dièse. Si vous n'avez pas essayé de vous connecter, appuyez sur zéro, puis dièse."
say fr pin       "Veuillez saisir votre code PIN, suivi de la touche dièse."
say fr challenge "Veuillez saisir les chiffres affichés sur votre écran, suivis de la touche dièse."
say fr thanks    "Merci. Votre connexion est confirmée."
say fr fraud-ack "Votre signalement a été enregistré. La connexion a été refusée."
say fr goodbye   "Au revoir."
say fr no-input  "Désolé, nous n'avons pas reçu votre réponse."
say fr invalid   "Désolé, ce n'est pas correct."

say de greeting  "Hallo. Dies ist eine Anmeldeprüfung. Wenn Sie sich gerade anmelden, drücken Sie die Rautetaste. Wenn Sie sich nicht anmelden wollten, drücken Sie Null und dann Raute."
say de pin       "Bitte geben Sie Ihre PIN ein, gefolgt von der Rautetaste."
say de challenge "Bitte geben Sie die Ziffern auf Ihrem Bildschirm ein, gefolgt von der Rautetaste."
say de thanks    "Vielen Dank. Ihre Anmeldung ist bestätigt."
say de fraud-ack "Ihre Meldung wurde aufgenommen. Die Anmeldung wurde abgelehnt."
say de goodbye   "Auf Wiederhören."
say de no-input  "Leider haben wir keine Antwort erhalten."
say de invalid   "Leider ist das nicht korrekt."
