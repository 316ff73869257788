//! The sign-in page's words in the prompt languages (en, es, fr, de), chosen by the
//! verification's `language` (`es-MX` speaks `es`; anything else speaks English).

/// Every sentence of the page. `{phone}` is replaced by the masked number.
pub struct Text {
    pub lang: &'static str,
    pub title: &'static str,
    pub phone_instructions: &'static str,
    pub app_code_instructions: &'static str,
    pub queued: &'static str,
    pub calling: &'static str,
    pub ringing: &'static str,
    pub in_call: &'static str,
    pub switching: &'static str,
    pub awaiting_code: &'static str,
    pub code_label: &'static str,
    pub code_hint: &'static str,
    pub verify: &'static str,
    pub wrong_code: &'static str,
    pub code_used: &'static str,
    pub bad_code: &'static str,
    pub locked: &'static str,
    pub alternates: &'static str,
    pub alt_phone: &'static str,
    pub alt_app_code: &'static str,
    pub approved: &'static str,
    pub not_approved: &'static str,
    pub continue_label: &'static str,
    pub link_invalid: &'static str,
    pub link_used: &'static str,
    pub link_expired: &'static str,
    pub session_missing: &'static str,
    pub start_again: &'static str,
    pub form_refused: &'static str,
}

const EN: Text = Text {
    lang: "en",
    title: "Verify it's you",
    phone_instructions: "We're calling your phone {phone}. Answer it and press # to continue.",
    app_code_instructions: "Open your authenticator app and enter the 6-digit code it shows.",
    queued: "Getting ready to call you…",
    calling: "Calling your phone…",
    ringing: "Your phone is ringing.",
    in_call: "Call answered. Press # on your phone.",
    switching: "Ending the call…",
    awaiting_code: "Waiting for your code.",
    code_label: "Verification code",
    code_hint: "6 digits",
    verify: "Verify",
    wrong_code: "That code didn't work. Check the app and try again.",
    code_used: "That code was already used. Wait for the next one.",
    bad_code: "Enter the 6 digits shown in the app.",
    locked: "Too many wrong codes. Try again later, or use a different verification option.",
    alternates: "Use a different verification option",
    alt_phone: "Call my phone {phone}",
    alt_app_code: "Use a code from my authenticator app",
    approved: "You're verified. Taking you back…",
    not_approved: "We couldn't verify you. Taking you back…",
    continue_label: "Continue",
    link_invalid: "This sign-in link is not valid.",
    link_used: "This sign-in link was already used.",
    link_expired: "This sign-in link has expired.",
    session_missing: "This sign-in page is not open in this browser, or it has expired.",
    start_again: "Go back to the sign-in page and start again.",
    form_refused: "That request could not be accepted. Reload the page and try again.",
};

const ES: Text = Text {
    lang: "es",
    title: "Confirma que eres tú",
    phone_instructions: "Te estamos llamando al teléfono {phone}. Contesta y pulsa # para continuar.",
    app_code_instructions: "Abre tu aplicación de autenticación e introduce el código de 6 dígitos que muestra.",
    queued: "Preparando la llamada…",
    calling: "Llamando a tu teléfono…",
    ringing: "Tu teléfono está sonando.",
    in_call: "Llamada contestada. Pulsa # en tu teléfono.",
    switching: "Terminando la llamada…",
    awaiting_code: "Esperando tu código.",
    code_label: "Código de verificación",
    code_hint: "6 dígitos",
    verify: "Verificar",
    wrong_code: "Ese código no es válido. Revisa la aplicación e inténtalo de nuevo.",
    code_used: "Ese código ya se usó. Espera al siguiente.",
    bad_code: "Introduce los 6 dígitos que muestra la aplicación.",
    locked: "Demasiados códigos incorrectos. Inténtalo más tarde o usa otra opción de verificación.",
    alternates: "Usar otra opción de verificación",
    alt_phone: "Llamar a mi teléfono {phone}",
    alt_app_code: "Usar un código de mi aplicación de autenticación",
    approved: "Verificación completada. Volviendo…",
    not_approved: "No hemos podido verificarte. Volviendo…",
    continue_label: "Continuar",
    link_invalid: "Este enlace de inicio de sesión no es válido.",
    link_used: "Este enlace de inicio de sesión ya se usó.",
    link_expired: "Este enlace de inicio de sesión ha caducado.",
    session_missing: "Esta página de inicio de sesión no está abierta en este navegador o ha caducado.",
    start_again: "Vuelve a la página de inicio de sesión y empieza de nuevo.",
    form_refused: "No se ha podido aceptar la solicitud. Recarga la página e inténtalo de nuevo.",
};

const FR: Text = Text {
    lang: "fr",
    title: "Confirmez votre identité",
    phone_instructions: "Nous appelons votre téléphone {phone}. Répondez et appuyez sur # pour continuer.",
    app_code_instructions: "Ouvrez votre application d'authentification et saisissez le code à 6 chiffres affiché.",
    queued: "Préparation de l'appel…",
    calling: "Appel de votre téléphone…",
    ringing: "Votre téléphone sonne.",
    in_call: "Appel décroché. Appuyez sur # sur votre téléphone.",
    switching: "Fin de l'appel…",
    awaiting_code: "En attente de votre code.",
    code_label: "Code de vérification",
    code_hint: "6 chiffres",
    verify: "Vérifier",
    wrong_code: "Ce code n'est pas valide. Vérifiez l'application et réessayez.",
    code_used: "Ce code a déjà été utilisé. Attendez le suivant.",
    bad_code: "Saisissez les 6 chiffres affichés dans l'application.",
    locked: "Trop de codes erronés. Réessayez plus tard ou choisissez une autre option de vérification.",
    alternates: "Utiliser une autre option de vérification",
    alt_phone: "Appeler mon téléphone {phone}",
    alt_app_code: "Utiliser un code de mon application d'authentification",
    approved: "Identité confirmée. Retour en cours…",
    not_approved: "Nous n'avons pas pu confirmer votre identité. Retour en cours…",
    continue_label: "Continuer",
    link_invalid: "Ce lien de connexion n'est pas valide.",
    link_used: "Ce lien de connexion a déjà été utilisé.",
    link_expired: "Ce lien de connexion a expiré.",
    session_missing: "Cette page de connexion n'est pas ouverte dans ce navigateur, ou elle a expiré.",
    start_again: "Revenez à la page de connexion et recommencez.",
    form_refused: "Cette demande n'a pas pu être acceptée. Rechargez la page et réessayez.",
};

const DE: Text = Text {
    lang: "de",
    title: "Bestätigen Sie, dass Sie es sind",
    phone_instructions: "Wir rufen Ihr Telefon {phone} an. Nehmen Sie ab und drücken Sie #, um fortzufahren.",
    app_code_instructions: "Öffnen Sie Ihre Authenticator-App und geben Sie den angezeigten 6-stelligen Code ein.",
    queued: "Der Anruf wird vorbereitet…",
    calling: "Ihr Telefon wird angerufen…",
    ringing: "Ihr Telefon klingelt.",
    in_call: "Anruf angenommen. Drücken Sie # auf Ihrem Telefon.",
    switching: "Der Anruf wird beendet…",
    awaiting_code: "Warten auf Ihren Code.",
    code_label: "Bestätigungscode",
    code_hint: "6 Ziffern",
    verify: "Bestätigen",
    wrong_code: "Dieser Code hat nicht funktioniert. Prüfen Sie die App und versuchen Sie es erneut.",
    code_used: "Dieser Code wurde bereits verwendet. Warten Sie auf den nächsten.",
    bad_code: "Geben Sie die 6 Ziffern aus der App ein.",
    locked: "Zu viele falsche Codes. Versuchen Sie es später erneut oder wählen Sie eine andere Bestätigungsoption.",
    alternates: "Eine andere Bestätigungsoption verwenden",
    alt_phone: "Mein Telefon {phone} anrufen",
    alt_app_code: "Einen Code aus meiner Authenticator-App verwenden",
    approved: "Bestätigt. Sie werden zurückgeleitet…",
    not_approved: "Wir konnten Sie nicht bestätigen. Sie werden zurückgeleitet…",
    continue_label: "Weiter",
    link_invalid: "Dieser Anmeldelink ist ungültig.",
    link_used: "Dieser Anmeldelink wurde bereits verwendet.",
    link_expired: "Dieser Anmeldelink ist abgelaufen.",
    session_missing: "Diese Anmeldeseite ist in diesem Browser nicht geöffnet oder abgelaufen.",
    start_again: "Kehren Sie zur Anmeldeseite zurück und beginnen Sie erneut.",
    form_refused: "Diese Anfrage konnte nicht angenommen werden. Laden Sie die Seite neu und versuchen Sie es erneut.",
};

/// The words for a verification's `language`.
pub fn text(language: &str) -> &'static Text {
    match language.get(..2) {
        Some("es") => &ES,
        Some("fr") => &FR,
        Some("de") => &DE,
        _ => &EN,
    }
}

/// `template` with `{phone}` replaced.
pub fn with_phone(template: &str, phone: &str) -> String {
    template.replace("{phone}", phone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_pick_their_text_and_every_phone_sentence_has_the_slot() {
        assert_eq!(text("es-MX").lang, "es");
        assert_eq!(text("de").lang, "de");
        assert_eq!(text("pt").lang, "en");
        for t in [&EN, &ES, &FR, &DE] {
            assert!(t.phone_instructions.contains("{phone}"), "{}", t.lang);
            assert!(t.alt_phone.contains("{phone}"), "{}", t.lang);
            assert!(t.phone_instructions.contains('#'), "{}", t.lang);
        }
    }
}
