#!/usr/bin/env python3
"""Build the hand-written French administrative corpus for personal-data detection.

Standard library only.  Every text below was written by hand, as a ministry or
local-authority agent would write it, without looking at the detectors'
patterns.  Inline markup:

    [[TYPE:surface text]]   a labelled span (TYPE in LABEL_TYPES)
    {{surface text}}        a deliberate hard negative: kept in the text,
                            NOT labelled; the braces only let this script
                            count the texts that contain hard negatives.

Output: personal_handwritten.jsonl next to this script (or the path given as
the first argument), one object per line:

    {"id": "conv-001", "text": "...", "labels": [["PERSON", start, end], ...]}

start/end are UTF-8 byte offsets into text, end exclusive.  Labels are sorted
by start.  The output is deterministic: re-running the script regenerates the
file byte for byte.

    python3 build_personal_handwritten.py            # write + validate
    python3 build_personal_handwritten.py --check    # validate the file on disk
"""

import json
import os
import re
import sys
import unicodedata
from collections import Counter

LABEL_TYPES = (
    "PERSON",
    "ADDRESS",
    "DATE_OF_BIRTH",
    "HEALTH",
    "RELIGION",
    "POLITICAL_OPINION",
    "UNION_MEMBERSHIP",
    "SEXUAL_ORIENTATION",
    "ETHNIC_ORIGIN",
    "CRIMINAL_RECORD",
)

MINIMUMS = {
    "PERSON": 150,
    "ADDRESS": 60,
    "DATE_OF_BIRTH": 40,
    "HEALTH": 8,
    "RELIGION": 8,
    "POLITICAL_OPINION": 8,
    "UNION_MEMBERSHIP": 8,
    "SEXUAL_ORIENTATION": 8,
    "ETHNIC_ORIGIN": 8,
    "CRIMINAL_RECORD": 8,
}

NBSP = "\u00a0"   # no-break space (French typography before « : »)
NNBSP = "\u202f"  # narrow no-break space (Word / LibreOffice output)

# ---------------------------------------------------------------------------
# The texts, grouped by genre.  Genre key -> id prefix.
# ---------------------------------------------------------------------------

GENRES = {}

# Convocations ---------------------------------------------------------------
GENRES["conv"] = [
    "Madame [[PERSON:Sophie Lefèvre]], vous êtes convoquée {{le 14/02/2025}} à 9 h 30 à la {{préfecture de Lyon}}, bureau des étrangers, guichet 4. {{Merci}} de vous munir de votre passeport et du présent courrier.",
    "{{Objet}}" + NBSP + ": convocation à un entretien préalable à sanction. Monsieur [[PERSON:Karim Benali]], demeurant [[ADDRESS:12 bis rue des Lilas, 75011 Paris]], est prié de se présenter {{le mardi 3 juin 2025}} au service des ressources humaines.",
    "[[PERSON:Aminata Traoré]], née le [[DATE_OF_BIRTH:03/09/1991]], est convoquée devant la commission de médiation {{le 22 avril 2025}} à 14 h, {{salle Marie-Curie}}.",
    "Le tribunal judiciaire convoque M. [[PERSON:Mehmet Yılmaz]] en qualité de témoin à l'audience du {{12 mars 2025}}. Il sera entendu sur les faits reprochés à [[PERSON:Emre Kaya]], [[CRIMINAL_RECORD:placé sous contrôle judiciaire]] depuis {{janvier}}.",
    "{{Madame la Directrice}} convoque [[PERSON:Nguyễn Thị Lan]] à la visite médicale de reprise prévue {{le 5 mai}} au service de santé au travail, [[ADDRESS:18 avenue Jean-Jaurès, 69007 Lyon]].",
    "Vous êtes invité à vous présenter à l'OFII, [[ADDRESS:48 rue de la République, 13002 Marseille]], pour la signature de votre contrat d'intégration républicaine. Nom\u00a0: [[PERSON:CAMARA]] Prénom\u00a0: [[PERSON:Seydou]] – Date de naissance\u00a0: [[DATE_OF_BIRTH:17/11/1996]].",
    "Le conseil de discipline se réunira {{le jeudi 10 avril 2025}} au {{lycée Victor-Hugo}} pour examiner la situation de l'élève [[PERSON:Lucas Girard]], en présence de ses parents, M. et Mme [[PERSON:Girard]].",
    "Mme [[PERSON:Maria da Conceição Pereira]], agente d'entretien, est convoquée à un entretien de fin de période d'essai. L'entretien aura lieu {{en avril}} dans le bureau du chef de service, {{bâtiment Pierre-Mendès-France}}.",
    "{{Bonjour}} [[PERSON:Ionuț Popescu]], votre rendez-vous en préfecture pour le renouvellement de votre titre de séjour est fixé {{au 28/05/2025}} à 10 h 15. {{Merci}} d'apporter un justificatif de domicile au nom de votre logeur, M. [[PERSON:Florin Georgescu]].",
    "Convocation à la commission départementale d'expulsion\u00a0: M. [[PERSON:Rachid Mansouri]], [[CRIMINAL_RECORD:condamné à trois ans d'emprisonnement]] par le tribunal correctionnel de Créteil, est convoqué {{le 6 juin 2025}}.",
    "La caisse primaire convoque [[PERSON:Awa Coulibaly]], domiciliée à [[ADDRESS:Montreuil]], à un examen par le médecin-conseil au sujet de son arrêt de travail pour [[HEALTH:dépression sévère]].",
    "Monsieur [[PERSON:João Ferreira]] est convoqué à la mairie {{le 15 mars}} pour la publication des bans. Sa future épouse, [[PERSON:Ana Lúcia Gonçalves]], est priée de l'accompagner.",
    "Le jury de recrutement vous recevra {{le 2 juillet 2025}} à 11 h. {{Monsieur le Préfet}} présidera la séance. Candidat\u00a0: [[PERSON:LEMOINE Gérard]], [[ADDRESS:7 impasse des Tilleuls, 21000 Dijon]].",
    "[[PERSON:Ibrahima Ndiaye]], déjà [[CRIMINAL_RECORD:connu des services de police]] pour des faits similaires, et [[PERSON:Cheikh Mbaye]] sont convoqués au commissariat pour une audition libre.",
    "Mme [[PERSON:Zeynep Çelik]], [[HEALTH:reconnue travailleuse handicapée]] en 2021, est convoquée devant la commission de réforme {{le 19 septembre}}.",
    "Suite à votre demande du {{4 février 2025}}, nous vous convoquons à un entretien d'évaluation de votre demande d'asile. Demandeur\u00a0: [[PERSON:Ahmad Shah Rahimi]], né le [[DATE_OF_BIRTH:1er janvier 1994]].",
    "M. [[PERSON:Benoît Lacroix]], [[UNION_MEMBERSHIP:délégué syndical CFDT]], est convoqué à la réunion de négociation annuelle qui se tiendra {{le 14 mars}} à la direction générale.",
    "{{Madame, Monsieur}}, votre enfant [[PERSON:Inès Haddad]] est convoquée à l'épreuve orale du baccalauréat au {{lycée Jean-Moulin}}, {{le 23 juin}} à 8 h.",
    "La commission d'attribution des logements examinera {{le 8 avril}} la demande déposée par [[PERSON:Fatma Koç]], domiciliée à titre provisoire au [[ADDRESS:Foyer Adoma, 3 rue Gambetta, 93200 Saint-Denis]].",
    "M. [[PERSON:Trần Văn Minh]] est convoqué pour la remise de son décret de naturalisation à la cérémonie d'accueil du {{vendredi 16 mai}}, en {{salle des fêtes de la préfecture}}.",
    "Mme [[PERSON:Katarzyna Nowak]] est convoquée par le juge aux affaires familiales à l'audience du {{3 octobre 2025}} dans la procédure qui l'oppose à son ex-époux, [[PERSON:Piotr Nowak]].",
    "Le médecin du travail demande à revoir [[PERSON:Hervé Le Goff]], [[HEALTH:diabétique insulinodépendant]], avant toute reprise sur un poste de nuit.",
    "La Maison départementale des personnes handicapées convoque [[PERSON:Adama Ouédraogo]], [[ADDRESS:Résidence Les Érables, bât. C, 22 rue Pasteur, 86000 Poitiers]], pour l'évaluation de sa demande de prestation.",
    "Mme [[PERSON:Elena Constantinescu]], née le [[DATE_OF_BIRTH:22.07.1983]], est invitée à se présenter au bureau de l'état civil afin de compléter son dossier de mariage.",
    "{{Grâce à}} la réorganisation des services, les convocations de {{mars}} seront envoyées par voie électronique. [[PERSON:Nathalie Fournier]] reste votre interlocutrice pour toute question.",
    "M. [[PERSON:Gabriel Fontaine]], [[ADDRESS:Le Bourg, 23200 Aubusson]], est convoqué devant le tribunal de proximité {{le 11 juin}} à 9 h pour une affaire de bornage.",
]

# Courriers de réponse -------------------------------------------------------
GENRES["cour"] = [
    "{{Madame}}, par courrier du {{12 janvier 2025}}, vous avez sollicité le réexamen de la situation de votre fils, [[PERSON:Yanis Belkacem]]. J'ai l'honneur de vous informer que sa demande a été transmise au rectorat.",
    "Monsieur [[PERSON:Thierry Garnier]], [[ADDRESS:4 place du Marché, 35000 Rennes]]. En réponse à votre réclamation, je vous confirme que votre dossier est complet depuis {{le 3 mars 2024}}.",
    "J'accuse réception de la demande d'aide sociale présentée au nom de Mme [[PERSON:Jacqueline Boyer]], [[HEALTH:atteinte de la maladie d'Alzheimer]] et hébergée en EHPAD depuis {{avril}}.",
    "Suite à la {{décision du 3 mars 2024}}, le préfet a accordé un titre de séjour pour soins à M. [[PERSON:Moussa Konaté]], [[HEALTH:séropositif]] et suivi à l'{{hôpital Bichat}}.",
    "{{Monsieur le Maire}}, je fais suite à votre courrier concernant M. [[PERSON:Pascal Rousseau]], domicilié [[ADDRESS:lieu-dit Le Moulin, 12340 Bozouls]], dont la demande de permis de construire est en cours d'instruction.",
    "Madame [[PERSON:Leïla Cherif]], nous ne pouvons donner une suite favorable à votre demande de mutation. La {{clémence}} dont a fait preuve la commission l'an dernier ne saurait constituer un précédent.",
    "J'ai bien reçu votre signalement concernant votre voisin, M. [[PERSON:Didier Fontaine]], qui habiterait au [[ADDRESS:9 rue des Acacias, 44000 Nantes]]. Une enquête a été confiée au service d'hygiène.",
    "{{Madame la Présidente}}, la candidature de [[PERSON:Camille Faure]] au poste d'attachée ne peut être retenue, l'extrait de son [[CRIMINAL_RECORD:casier judiciaire portant mention d'une condamnation pour abus de confiance]].",
    "En réponse à votre courriel, je vous précise que le {{casier judiciaire national}} est tenu par le ministère de la justice à {{Nantes}} et que seul l'intéressé peut en obtenir le bulletin n° 3.",
    "Monsieur, vous avez indiqué que votre épouse, [[PERSON:Samira Bouzid]], était [[HEALTH:enceinte de sept mois]] au moment de l'expulsion locative. Ce point sera examiné par la commission de coordination.",
    "{{Objet}}\u00a0: votre demande d'aménagement de poste. Madame [[PERSON:Véronique Colin]], le médecin de prévention a confirmé que votre [[HEALTH:sclérose en plaques]] justifiait un aménagement de vos horaires.",
    "[[PERSON:Aurélie Caron]], cheffe du bureau des affaires générales, vous confirme que votre demande de congé a été acceptée. Bonne route pour vos congés de {{Noël}}.",
    "Nous avons pris note du changement d'adresse de M. [[PERSON:Hüseyin Öztürk]], désormais domicilié [[ADDRESS:27 chemin de la Croix, 67200 Strasbourg]].",
    "Par la présente, l'administration vous informe que la demande de regroupement familial de M. [[PERSON:Rui Fernandes]] au profit de son épouse [[PERSON:Sandra Da Silva]] a été acceptée.",
    "{{Madame, Monsieur}}, le dossier de M. [[PERSON:Boubacar Cissé]], résidant à [[ADDRESS:Villeneuve-Saint-Georges]], est incomplet\u00a0: il manque l'acte de naissance et la preuve de ressources.",
    "Je vous informe que la demande de carte mobilité inclusion déposée pour votre mère, Mme [[PERSON:Odette Marchand]], née le [[DATE_OF_BIRTH:14 août 1936]], a été accordée pour une durée de dix ans.",
    "Le rectorat a examiné la réclamation de M. [[PERSON:Abdelkader Boumediene]], professeur au {{collège Jules-Ferry}}, qui estime avoir été écarté d'une promotion parce qu'il est [[RELIGION:de confession musulmane]].",
    "Votre demande de subvention pour la rénovation de {{la pierre}} de taille du lavoir communal a été inscrite à l'ordre du jour du conseil de {{mai}}. Le dossier est suivi par [[PERSON:Yannick Le Bihan]].",
    "{{Monsieur le Directeur}}, vous trouverez ci-joint le courrier de Mme [[PERSON:Fernanda Alves]], [[ADDRESS:Appt 12, 5 rue Victor-Hugo, 33000 Bordeaux]], contestant le montant de sa taxe d'habitation.",
    "En réponse à votre lettre, nous confirmons que l'agent [[PERSON:Mihai Stoica]] a bien été [[UNION_MEMBERSHIP:désigné représentant de la section syndicale FO]] de l'établissement à compter du {{1er avril 2025}}.",
    "La demande de changement de prénom de [[PERSON:Kévin Moreau]] au profit de [[PERSON:Kenzo]] a été acceptée par l'officier de l'état civil {{le 9 janvier}}.",
    "Par courrier recommandé du {{20 février 2025}}, Maître [[PERSON:Claire Moreau]] nous informe que son client, M. [[PERSON:Sofiane Hamidi]], conteste la sanction disciplinaire prononcée à son encontre.",
    "Le dossier de bourse de l'étudiante [[PERSON:Linh Pham]], [[ADDRESS:résidence universitaire Jean-Zay, chambre 214, 92160 Antony]], a été transmis au CROUS de {{Versailles}}.",
    "[[PERSON:Sivakumar Rajendran]], [[ETHNIC_ORIGIN:d'origine tamoule]], nous a transmis le formulaire de demande de naturalisation\u00a0; il indique avoir fui le Sri Lanka en 2009.",
    "{{Merci}} de votre courrier du {{7 mars}}. Nous vous confirmons que les données de Mme [[PERSON:Haingo Rakotomalala]] ont été rectifiées dans le fichier des allocataires.",
    "Madame [[PERSON:Hafsa Zerrouki]], nous accusons réception de votre attestation de domicile\u00a0: [[ADDRESS:Esc. 2, 4e étage, 118 boulevard Voltaire, 75011 Paris]]. Votre dossier est désormais complet.",
]

# Plaintes -------------------------------------------------------------------
GENRES["plai"] = [
    "Je soussignée [[PERSON:Martine Dubois]], née le [[DATE_OF_BIRTH:3 mars 1962]] à Lille, demeurant [[ADDRESS:15 rue Jean-Baptiste-Lebas, 59000 Lille]], déclare porter plainte contre X pour vol avec effraction.",
    "La plaignante, [[PERSON:Yasmina Khelifi]], expose avoir été insultée par son voisin qui l'aurait traitée de « sale Arabe » en raison de ses [[ETHNIC_ORIGIN:origines maghrébines]].",
    "M. [[PERSON:Aram Petrossian]], [[RELIGION:de confession orthodoxe]], dépose plainte pour discrimination à l'embauche\u00a0; il estime que sa candidature a été écartée pour ce motif.",
    "Le mis en cause, [[PERSON:Stéphane Blanchard]], [[CRIMINAL_RECORD:placé en garde à vue]] {{le 12 janvier 2025}} à 18 h 40, a reconnu les faits.",
    "[[PERSON:Grâce Mbuyi Kabeya]] porte plainte contre son employeur, la société {{Boulanger}} de {{Valence}}, pour harcèlement moral, en précisant avoir fait l'objet de remarques répétées sur ses [[ETHNIC_ORIGIN:origines africaines]].",
    "Audition de [[PERSON:PHAM Thu Hà]], née le [[DATE_OF_BIRTH:28/02/1979]] à Hanoï (Viêt Nam), de nationalité française, commerçante, demeurant [[ADDRESS:61 boulevard de Belleville, 75020 Paris]].",
    "La victime, M. [[PERSON:Julien Mercier]], déclare avoir été agressé à la sortie d'un bar parce qu'il est [[SEXUAL_ORIENTATION:homosexuel]]. Les agresseurs auraient tenu des propos homophobes.",
    "Plainte de Mme [[PERSON:Olena Kovalenko]] pour escroquerie\u00a0: elle a versé 1 200 euros à un faux bailleur pour un appartement situé [[ADDRESS:3 rue Émile-Zola, 38000 Grenoble]].",
    "Je porte plainte contre mon ancien compagnon, [[PERSON:Kevin Rousseau]], qui a déjà été [[CRIMINAL_RECORD:condamné pour violences conjugales]] en 2019 et qui continue de me menacer.",
    "[[PERSON:Manuel Rodrigues]] signale la dégradation de son véhicule, une {{Renault Clio}} grise, stationnée {{avenue Jean-Jaurès}} dans la nuit du {{14 au 15 février}}.",
    "La requérante, [[PERSON:Nour El Houda Rahmani]], affirme avoir été refusée à l'entrée de la piscine municipale parce qu'elle portait un burkini\u00a0; elle se dit [[RELIGION:musulmane pratiquante]].",
    "Plainte déposée par M. [[PERSON:Youssef Amrani]], chauffeur chez {{Leclerc}}, contre un collègue qui a diffusé sur les réseaux sociaux une photographie de lui accompagnée de la mention « [[SEXUAL_ORIENTATION:gay]] ».",
    "La mère du mineur, Mme [[PERSON:Kadiatou Sylla]], indique que son fils [[PERSON:Mamadou]] a été frappé par un surveillant du {{collège Pierre-Curie}}.",
    "M. [[PERSON:Florian Petit]] accuse son supérieur de l'avoir écarté des réunions depuis qu'il s'est présenté aux élections professionnelles comme [[UNION_MEMBERSHIP:candidat CGT]].",
    "Le suspect, identifié comme [[PERSON:Dorian Maes]], 32 ans, est décrit par les témoins comme [[ETHNIC_ORIGIN:de type européen]], vêtu d'un blouson {{Lacoste}} noir. La victime, [[PERSON:Chantal Perrin]], n'a pas pu relever la plaque d'immatriculation.",
    "Je soussigné [[PERSON:Abdoulaye Bah]], né le [[DATE_OF_BIRTH:05-11-1993]] à Conakry, déclare que mes papiers d'identité m'ont été dérobés {{gare Montparnasse}} {{le 2 avril}}.",
    "La plaignante explique que M. [[PERSON:Gilles Morel]], son propriétaire, refuse de lui rendre son dépôt de garantie depuis qu'elle lui a appris qu'elle était [[SEXUAL_ORIENTATION:lesbienne]].",
    "Le prévenu, [[PERSON:Dylan Vasseur]], a déjà été [[CRIMINAL_RECORD:incarcéré à la maison d'arrêt de Fresnes]] pour des faits de vol aggravé.",
    "Plainte pour menaces de mort\u00a0: Mme [[PERSON:Rebecca Cohen]] explique avoir reçu des courriers anonymes la visant parce qu'elle est [[RELIGION:juive]].",
    "{{Le procureur de la République}} a classé sans suite la plainte déposée {{en mars}} par [[PERSON:Hugo Bertrand]], faute d'éléments suffisants.",
    "M. [[PERSON:Murat Şahin]], [[ADDRESS:Bât. B, 3 allée des Peupliers, 69100 Villeurbanne]], porte plainte pour tapage nocturne contre les occupants de l'appartement du dessus.",
    "Témoin entendu\u00a0: [[PERSON:Marc-Antoine Delaunay]], gardien de l'immeuble, qui déclare avoir vu le mis en cause, [[PERSON:Jordan Lefort]], quitter les lieux vers 23 heures.",
    "La victime, [[PERSON:Ayşe Demir]], déclare que son mari lui interdit de sortir et lui confisque son passeport. Elle est actuellement hébergée chez sa sœur, [[PERSON:Elif Arslan]], à [[ADDRESS:Bobigny]].",
    "La plaignante, [[PERSON:Carmen Ruiz]], militante associative, affirme avoir été prise à partie lors d'un tractage au marché {{place Charles-de-Gaulle}} parce qu'elle est [[POLITICAL_OPINION:adhérente du Parti communiste français]].",
    "Je soussigné [[PERSON:Vasile Rusu]], [[ADDRESS:1 rue de l'Église, 51100 Reims]], déclare la perte de ma carte de séjour {{le 3 mars 2025}} sur le parking du {{Carrefour}} de {{Cormontreuil}}.",
]

# Dossiers de titre de séjour / asile ----------------------------------------
GENRES["sej"] = [
    "Demandeur\u00a0: [[PERSON:EL IDRISSI Fatima Zahra]], née le [[DATE_OF_BIRTH:14/02/1987]] à Casablanca (Maroc), nationalité marocaine. Adresse\u00a0: [[ADDRESS:8 rue du Docteur-Roux, 94200 Ivry-sur-Seine]].",
    "Le requérant, [[PERSON:Rami Al-Hassan]], de nationalité syrienne, déclare être entré en France {{le 12/09/2015}}. Il sollicite une carte de résident.",
    "M. [[PERSON:Ousmane Sow]], DDN [[DATE_OF_BIRTH:14.02.87]], sollicite un titre de séjour « vie privée et familiale » en qualité de parent d'enfant français, [[PERSON:Awa Sow]], née le [[DATE_OF_BIRTH:2 décembre 2019]].",
    "M. [[PERSON:Ibrahim Kamara]], hébergé au centre d'accueil de demandeurs d'asile de {{Nancy}}, expose avoir été persécuté dans son pays en raison de son [[SEXUAL_ORIENTATION:homosexualité]].",
    "Mme [[PERSON:Rojda Aydın]], [[ETHNIC_ORIGIN:d'origine kurde]], déclare avoir été menacée à plusieurs reprises en Turquie pour avoir été [[POLITICAL_OPINION:militante du HDP]].",
    "Titre de séjour pour soins\u00a0: l'avis du collège de médecins de l'OFII indique que M. [[PERSON:Lamine Touré]] souffre d'une [[HEALTH:insuffisance rénale chronique nécessitant une dialyse]].",
    "Nom\u00a0: [[PERSON:POPESCU]]\nPrénoms\u00a0: [[PERSON:Ionuț Andrei]]\nDate de naissance\u00a0: [[DATE_OF_BIRTH:1990-06-30]]\nAdresse\u00a0: [[ADDRESS:14 rue de la Paix, 57000 Metz]]",
    "Le demandeur, [[PERSON:Tenzin Dorjee]], [[RELIGION:moine bouddhiste]], expose les persécutions subies dans la région autonome du Tibet.",
    "M. [[PERSON:Amadou Barry]], [[ETHNIC_ORIGIN:d'ethnie peule]], fait valoir que les membres de sa famille ont été ciblés lors des violences de 2019.",
    "La commission du titre de séjour émet un avis défavorable pour M. [[PERSON:Nikola Petrović]], dont le bulletin n° 2 du [[CRIMINAL_RECORD:casier judiciaire porte mention d'une condamnation à dix-huit mois d'emprisonnement pour trafic de stupéfiants]].",
    "Mme [[PERSON:Maria Ionescu]], née [[PERSON:Vasilescu]] le [[DATE_OF_BIRTH:9 mai 1988]] à Iași (Roumanie), réside régulièrement en France depuis 2012.",
    "{{La préfecture de Seine-Saint-Denis}} accuse réception de la demande d'admission exceptionnelle au séjour présentée par [[PERSON:Sekou Fofana]], chez M. [[PERSON:Diakité]], [[ADDRESS:11 avenue Paul-Vaillant-Couturier, 93120 La Courneuve]].",
    "L'intéressée, [[PERSON:Mariam Diarra]], [[HEALTH:enceinte de six mois]], expose avoir fui le Mali pour échapper à un mariage forcé\u00a0; elle est suivie à la maternité de l'{{hôpital Louis-Mourier}}.",
    "Le requérant, [[PERSON:Ahmed Tazi]], date de naissance\u00a0: [[DATE_OF_BIRTH:12/10/1978]], indique être [[POLITICAL_OPINION:sympathisant du mouvement Hirak]] et craindre des poursuites en cas de retour.",
    "La demande de M. [[PERSON:Lê Hoàng Nam]] a été enregistrée {{le 14/02/2025}} au guichet unique. Date d'entrée en France\u00a0: {{2019-04-01}}.",
    "Dossier n° 2025/0417 – [[PERSON:Kofi Mensah]], né le [[DATE_OF_BIRTH:7 juillet 1985]] à Kumasi (Ghana), célibataire, sans enfant. Hébergé par un tiers à [[ADDRESS:Saint-Ouen-sur-Seine]].",
    "M. [[PERSON:Arash Karimi]] déclare s'être [[RELIGION:converti au christianisme]] en Iran et avoir fréquenté une église de maison avant son départ.",
    "Selon le rapport de l'OFPRA, Mme [[PERSON:Amina Abdi Farah]] serait [[ETHNIC_ORIGIN:issue d'un clan minoritaire somalien]].",
    "{{Florence}} et {{Lourdes}} figurent parmi les villes où le demandeur dit avoir transité. Le requérant, [[PERSON:Samuel Okafor]], n'a présenté aucun document de voyage.",
    "Demande de titre de séjour « salarié » pour M. [[PERSON:Wei Zhang]] ([[PERSON:ZHANG Wei]] sur le passeport), né le [[DATE_OF_BIRTH:15/03/1992]], embauché comme cuisinier au restaurant « {{Le Lotus}} ».",
    "Mme [[PERSON:Svetlana Morozova]] fait valoir qu'elle vit en France [[SEXUAL_ORIENTATION:avec sa compagne]], [[PERSON:Irina Volkova]], et qu'elle serait exposée à des persécutions en Russie en raison de son [[SEXUAL_ORIENTATION:orientation sexuelle]].",
    "L'intéressé, [[PERSON:Hamid Noorzai]], se déclarant mineur, a été pris en charge par l'aide sociale à l'enfance du département.",
    "Le requérant, [[PERSON:Daniel Tesfaye]], produit une attestation de M. [[PERSON:Jean-Baptiste Louis-Jeune]], [[RELIGION:pasteur de l'Église évangélique]] de {{Saint-Denis}}, certifiant qu'il est [[RELIGION:membre actif de la communauté protestante]].",
    "M. [[PERSON:Aliou Diop]], né le [[DATE_OF_BIRTH:30/01/1990]] selon son acte de naissance sénégalais, demande une carte de séjour pluriannuelle.",
    "Le dossier de [[PERSON:Andrei Dumitrescu]] comporte une fiche de recherche signalant qu'il a fait l'objet d'une [[CRIMINAL_RECORD:mise en examen pour proxénétisme]] en 2022.",
    "Justificatif de domicile au nom de [[PERSON:Mariana Oliveira]], [[ADDRESS:64 rue Jean-Jaurès, appt 3, 29200 Brest]], daté du {{10 janvier 2025}}.",
]

# Actes et documents d'état civil --------------------------------------------
GENRES["etat"] = [
    "Le [[DATE_OF_BIRTH:quatorze février mil neuf cent quatre-vingt-sept]], à dix heures, est né à Lyon 3e [[PERSON:Thomas Nguyen]], de sexe masculin, fils de [[PERSON:Van Hai Nguyen]] et de [[PERSON:Marie Tran]], son épouse.",
    "Extrait d'acte de mariage\u00a0: [[PERSON:Jean-Pierre de La Fontaine]], né le [[DATE_OF_BIRTH:2 avril 1971]] à Versailles, et [[PERSON:Isabelle Mercier]], née le [[DATE_OF_BIRTH:19 octobre 1974]] à Chartres, se sont mariés à la mairie de {{Nancy}} {{le 6 juin 1998}}.",
    "Acte de décès\u00a0: [[PERSON:Bernard Roussel]], retraité, domicilié [[ADDRESS:22 route de Lyon, 01000 Bourg-en-Bresse]], est décédé {{le 11 novembre 2024}} au centre hospitalier.",
    "Mention marginale\u00a0: divorcé de [[PERSON:Nadia Haddad]] par jugement du tribunal judiciaire de {{Marseille}} en date du {{3 mars 2024}}.",
    "[[PERSON:Manon Vidal]], épouse [[PERSON:Bertrand]], née le [[DATE_OF_BIRTH:21/06/1989]] à Toulouse, a reconnu par anticipation l'enfant à naître.",
    "Déclaration de naissance\u00a0: l'enfant [[PERSON:Lina Benali]], née le [[DATE_OF_BIRTH:5 janvier 2025]] à 3 h 12 à la {{maternité Port-Royal}}, fille de [[PERSON:Karim Benali]] et de [[PERSON:Camille Faure]].",
    "Pacte civil de solidarité enregistré entre [[PERSON:Nicolas Garnier]], né le [[DATE_OF_BIRTH:11/09/1985]], et [[PERSON:Amandine Lambert]], née le [[DATE_OF_BIRTH:27/03/1987]], domiciliés ensemble [[ADDRESS:9 quai des Chartrons, 33000 Bordeaux]].",
    "L'officier de l'état civil certifie que [[PERSON:Fatoumata Keïta]], veuve [[PERSON:Traoré]], est domiciliée à [[ADDRESS:Évry-Courcouronnes]] depuis 2011.",
    "Le registre des décès de {{mars}} comporte l'acte de [[PERSON:Antonio Carvalho]], décédé à son domicile, [[ADDRESS:lieu-dit La Bastide, 46100 Figeac]].",
    "Copie intégrale d'acte de naissance – Nom\u00a0: [[PERSON:OUÉDRAOGO]] – Prénom(s)\u00a0: [[PERSON:Adama Salif]] – Né le\u00a0: [[DATE_OF_BIRTH:08/12/1982]] – à\u00a0: Ouagadougou (Burkina Faso).",
    "{{La rose}} des vents et la devise de la commune figurent en tête du registre. L'acte a été dressé sur la déclaration de [[PERSON:Sylvie Roux]], sage-femme.",
    "Acte de reconnaissance\u00a0: [[PERSON:Cédric Lemaire]], né le [[DATE_OF_BIRTH:3 novembre 1990]], demeurant [[ADDRESS:56 avenue de la Libération, 63000 Clermont-Ferrand]], reconnaît être le père de l'enfant [[PERSON:Jade]].",
    "Le mariage de M. [[PERSON:Mehdi Saïdi]] et de Mlle [[PERSON:Zineb Bennani]] sera célébré à la mairie du 18e arrondissement {{le samedi 12 juillet 2025}}.",
    "Changement de nom\u00a0: par décret du {{18 avril 2024}}, [[PERSON:Jordan Kevin Duchemin]] est autorisé à s'appeler [[PERSON:Jordan Kevin Duval]].",
    "Fiche familiale d'état civil\u00a0: père [[PERSON:Paulo Teixeira]] (né le [[DATE_OF_BIRTH:17/05/1975]]), mère [[PERSON:Fernanda Alves]] (née le [[DATE_OF_BIRTH:29/01/1978]]), enfant [[PERSON:Lucas Teixeira]].",
    "Transcription de l'acte de mariage célébré à Alger entre [[PERSON:Abdelkader Boumediene]] et [[PERSON:Khadija Ouali]], domiciliés [[ADDRESS:31 rue Danton, 92300 Levallois-Perret]].",
    "Le livret de famille de M. et Mme [[PERSON:Martin]] a été délivré {{le 2 septembre 2024}}. Il porte mention de la naissance de [[PERSON:Chloé Martin]], née le [[DATE_OF_BIRTH:14 juillet 2024]] à Angers.",
    "Certificat de vie délivré à Mme [[PERSON:Maria da Conceição Pereira]], [[ADDRESS:2 rue des Écoles, 87000 Limoges]], pour sa caisse de retraite portugaise.",
    "L'acte de naissance de [[PERSON:Nguyễn Văn Phúc]] mentionne {{Saint-Étienne}} comme lieu de naissance et le [[DATE_OF_BIRTH:01/04/1968]] comme date de naissance.",
    "Demande de copie d'acte de naissance formulée par [[PERSON:Laurence Girard]] pour son père, [[PERSON:Henri Girard]], né le [[DATE_OF_BIRTH:24 décembre 1941]] à Dieppe.",
    "Acte de notoriété\u00a0: les témoins [[PERSON:Roger Vasseur]] et [[PERSON:Paulette Leroy]] attestent que le défunt n'a laissé aucun autre héritier que sa fille [[PERSON:Sandrine Vasseur]].",
    "Fait à Strasbourg, le {{14 février 2025}}. L'officier de l'état civil, [[PERSON:Hélène Schmitt]], adjointe au maire.",
    "Domicile des époux\u00a0: [[ADDRESS:Hameau de la Fontaine, 05100 Briançon]]. Témoins\u00a0: [[PERSON:Justin Reynaud]] et [[PERSON:Margaux Reynaud]].",
]

# Fiches RH ------------------------------------------------------------------
GENRES["rh"] = [
    "Agent\u00a0: [[PERSON:LEFÈVRE Sophie]] – Matricule 0458213 – Grade\u00a0: attachée principale – Date de naissance\u00a0: [[DATE_OF_BIRTH:14/02/1987]] – Adresse\u00a0: [[ADDRESS:12 bis rue des Lilas, 75011 Paris]].",
    "[[PERSON:Élodie Marchand]] est en congé de longue maladie depuis le {{1er septembre 2024}} pour un [[HEALTH:cancer du sein]]. Son intérim est assuré par [[PERSON:Gaëlle Morin]].",
    "Fiche de poste modifiée pour [[PERSON:Mamadou Diallo]], [[HEALTH:reconnu travailleur handicapé]] (RQTH valable jusqu'en 2028)\u00a0: siège ergonomique et horaires aménagés.",
    "Le bulletin de paie de {{mars}} de [[PERSON:Benoît Lacroix]] comporte une retenue pour [[UNION_MEMBERSHIP:cotisation CFDT]] à sa demande.",
    "Nom d'usage\u00a0: [[PERSON:DURAND]] – Nom de naissance\u00a0: [[PERSON:KOWALSKI]] – Prénom\u00a0: [[PERSON:Agnieszka]] – né(e) le [[DATE_OF_BIRTH:23/08/1980]].",
    "Décharge d'activité de service\u00a0: [[PERSON:Nathalie Fournier]], [[UNION_MEMBERSHIP:secrétaire départementale de la FSU]], bénéficie d'une décharge de 50\u00a0% à compter de la rentrée.",
    "[[PERSON:Patrick Lemoine]] a été [[HEALTH:hospitalisé en psychiatrie]] du 3 au 28 février. Le médecin agréé se prononcera sur l'aptitude à la reprise.",
    "Les {{organisations syndicales}} ont été reçues {{le 14 février 2025}} par la direction. Aucune donnée individuelle n'a été communiquée.",
    "Dossier individuel de [[PERSON:Claire Moreau]], née le [[DATE_OF_BIRTH:3 mars 1990]], domiciliée [[ADDRESS:5 allée des Marronniers, 78000 Versailles]]. Situation familiale\u00a0: pacsée.",
    "Recrutement de [[PERSON:Yassine Hamdi]] en qualité de contractuel au service informatique. Prise de fonctions prévue {{le 2 mai 2025}}, bureau 214, {{site Pierre-Mendès-France}}.",
    "Arrêt de travail de [[PERSON:Sébastien Caron]] prolongé jusqu'au {{30 juin}}\u00a0: [[HEALTH:syndrome d'épuisement professionnel]].",
    "[[PERSON:Farida Meziane]] a demandé l'autorisation de s'absenter le jour de l'Aïd\u00a0; elle est [[RELIGION:de confession musulmane]] et pose un jour de congé annuel.",
    "Entretien professionnel 2024 de [[PERSON:Marc Olivier]]\u00a0: objectifs atteints, souhaite suivre une formation sur la {{laïcité}} dans la fonction publique.",
    "Liste des agents en reprise à temps partiel\u00a0: [[PERSON:Françoise Girard]] ([[HEALTH:suite d'AVC]]), [[PERSON:Loïc Perrot]] ([[HEALTH:après une chimiothérapie]]).",
    "[[PERSON:Kévin Lambert]], agent de maîtrise, a été [[UNION_MEMBERSHIP:élu au comité social d'administration sur la liste FO]].",
    "Fiche de renseignements\u00a0: [[PERSON:Aïssatou Bah]]\nDDN\u00a0: [[DATE_OF_BIRTH:11/04/1995]]\nAdresse\u00a0: [[ADDRESS:Appt 34, 10 rue Jean-Macé, 44100 Nantes]]\nPersonne à prévenir\u00a0: [[PERSON:Oumar Bah]] (frère)",
    "Candidature de [[PERSON:Emmanuelle Vincent]] au concours interne\u00a0: l'extrait de son [[CRIMINAL_RECORD:casier judiciaire porte mention d'une condamnation avec sursis]], à examiner par le jury.",
    "Note de la DRH\u00a0: le bulletin n° 2 du {{casier judiciaire}} est désormais demandé à tous les candidats aux postes au contact des mineurs.",
    "[[PERSON:Dominique Leroux]] a signalé à son chef de service qu'il est [[HEALTH:épileptique]] afin que les collègues sachent réagir en cas de crise.",
    "Mutation de [[PERSON:Sandrine Colin]] au {{centre hospitalier Édouard-Herriot}} à compter du {{1er mars}}. Nouvelle adresse personnelle\u00a0: [[ADDRESS:47 cours Gambetta, 69003 Lyon]].",
    "La commission administrative paritaire a examiné le recours de [[PERSON:Olivier Blanc]], [[UNION_MEMBERSHIP:adhérent SUD Santé Sociaux]], contre son évaluation.",
    "Le dossier de [[PERSON:Thi Mai Hoang]] indique qu'elle est [[HEALTH:en invalidité de catégorie 2]] depuis 2022 et perçoit une pension à ce titre.",
    "Demande de congé parental de [[PERSON:Guillaume Faure]], né le [[DATE_OF_BIRTH:7 septembre 1986]], pour son fils [[PERSON:Noé]], âgé de trois mois.",
    "Le médecin de prévention recommande d'éviter le port de charges lourdes pour [[PERSON:Nadège Rivière]], [[HEALTH:enceinte de cinq mois]].",
    "[[PERSON:Thierry Marchal]] est [[POLITICAL_OPINION:conseiller municipal d'opposition sur la liste Les Républicains]] et bénéficie à ce titre d'autorisations d'absence.",
    "Fiche de situation familiale\u00a0: M. [[PERSON:Franck Ollivier]], [[ADDRESS:23 rue des Jardins, 68000 Colmar]], déclare vivre [[SEXUAL_ORIENTATION:en couple avec un homme]] depuis 2016.",
    "Changement d'adresse de [[PERSON:Nicolas Faure]]\u00a0: ancienne adresse [[ADDRESS:3 rue Jules-Ferry, 76600 Le Havre]], nouvelle adresse [[ADDRESS:15 avenue René-Coty, 76600 Le Havre]].",
]

# Signalements ---------------------------------------------------------------
GENRES["sign"] = [
    "Signalement au procureur\u00a0: l'enfant [[PERSON:Enzo Lopez]], scolarisé à l'{{école Jean-Jaurès}}, présente des [[HEALTH:ecchymoses répétées]]. Sa mère, [[PERSON:Cindy Lopez]], demeure [[ADDRESS:3 cité des Fleurs, 59100 Roubaix]].",
    "Information préoccupante concernant [[PERSON:Léa Dumas]], née le [[DATE_OF_BIRTH:09/03/2012]]. Le père, [[PERSON:Franck Dumas]], serait [[HEALTH:alcoolique]] et violent au domicile.",
    "Signalement d'absentéisme\u00a0: [[PERSON:Ilyes Brahimi]], élève de terminale au {{lycée Gustave-Eiffel}}, cumule 42 demi-journées d'absence depuis {{septembre}}.",
    "Le voisinage signale que [[PERSON:Raymond Lefort]], 84 ans, [[HEALTH:atteint de démence]], sort seul la nuit en pyjama {{rue Émile-Zola}}.",
    "Fiche de signalement\u00a0: [[PERSON:Kevin Da Costa]], [[CRIMINAL_RECORD:sorti de détention]] il y a deux mois, aurait repris contact avec la victime malgré l'interdiction prononcée par le juge.",
    "Le bailleur signale un logement insalubre occupé par la famille [[PERSON:Traoré]] au [[ADDRESS:14 rue de la Gare, 95100 Argenteuil]], avec présence de moisissures et de plomb.",
    "Signalement de maltraitance en EHPAD\u00a0: Mme [[PERSON:Germaine Fabre]], [[HEALTH:grabataire]], n'aurait pas été changée pendant plus de douze heures.",
    "Un agent a signalé que M. [[PERSON:Sylvain Roche]] tenait des propos antisémites à l'égard de son collègue, [[PERSON:David Lévy]], qu'il sait [[RELIGION:de confession juive]].",
    "Le CCAS signale que [[PERSON:Marcel Dupuis]], sans domicile fixe, dort depuis {{novembre}} dans le hall de la {{gare Saint-Lazare}}.",
    "Alerte de l'assistante sociale\u00a0: [[PERSON:Jessica Hamel]], mère isolée de trois enfants, domiciliée à [[ADDRESS:Maubeuge]], est [[HEALTH:en dépression]] et n'assure plus les repas.",
    "Signalement Pharos\u00a0: le compte « justice4all » diffuse l'adresse personnelle d'un élu, [[ADDRESS:17 rue des Vignes, 24000 Périgueux]], accompagnée d'appels à la violence.",
    "Le professeur principal signale qu'[[PERSON:Amine Chaouch]] est victime de moqueries répétées parce qu'il est [[SEXUAL_ORIENTATION:bisexuel]]. Les parents n'en ont pas été informés.",
    "Signalement à la cellule de veille\u00a0: [[PERSON:Mathis Royer]], 16 ans, déjà [[CRIMINAL_RECORD:condamné par le tribunal pour enfants]] pour recel, fugue régulièrement.",
    "La {{Fondation Abbé-Pierre}} signale à la préfecture plusieurs familles hébergées dans un gymnase de la {{rue Jean-Moulin}}. Parmi elles, celle de [[PERSON:Bogdan Lăcătuș]], [[ETHNIC_ORIGIN:d'origine rom]].",
    "Signalement de l'infirmière scolaire\u00a0: [[PERSON:Clara Besson]], élève de 4e au {{collège Albert-Camus}}, présente des signes d'[[HEALTH:anorexie mentale]].",
    "L'agent d'accueil signale qu'un usager, [[PERSON:Christophe Noël]], se présentant comme [[POLITICAL_OPINION:militant d'ultradroite]], a proféré des menaces au guichet {{le 5 mars 2025}}.",
    "Le gardien signale que le logement de M. [[PERSON:Ivan Petrov]], [[ADDRESS:2 square Paul-Éluard, 94000 Créteil]], semble inoccupé depuis plusieurs mois.",
    "Signalement au titre de l'article 40\u00a0: le comptable [[PERSON:René Barbier]] aurait détourné des fonds publics\u00a0; il a déjà été [[CRIMINAL_RECORD:condamné en 2015 pour faux en écriture]].",
    "{{Noël}} approchant, le service social rappelle que les signalements d'enfants en danger restent traités 24 h sur 24 par la cellule départementale.",
    "La directrice d'école signale l'absence prolongée de [[PERSON:Rayan Messaoudi]], dont le père, [[PERSON:Farid Messaoudi]], a été [[CRIMINAL_RECORD:incarcéré]] {{en janvier}}.",
    "Une habitante de [[ADDRESS:11 chemin des Vignes, 84000 Avignon]], [[PERSON:Colette Arnaud]], signale des aboiements incessants chez son voisin.",
    "La police municipale signale un véhicule {{Mercedes}} abandonné devant le [[ADDRESS:27 rue Paul-Bert, 37000 Tours]], domicile de [[PERSON:Gérald Brun]].",
]

# Comptes rendus de commission ----------------------------------------------
GENRES["cr"] = [
    "Compte rendu de la réunion du {{14/02/2025}}. Présents\u00a0: [[PERSON:Anne Roux]], [[PERSON:Thomas Nguyen]], [[PERSON:Kadiatou Sylla]], [[PERSON:Hervé Le Goff]]. Excusé\u00a0: [[PERSON:Gérard Lemoine]].",
    "La commission examine un dossier de renouvellement. Le rapporteur rappelle que M. [[PERSON:Rachid Mansouri]] a été [[CRIMINAL_RECORD:condamné à huit mois d'emprisonnement avec sursis]] en 2021 et émet un avis réservé.",
    "Point 3 – Demandes de logement prioritaire. Le dossier de [[PERSON:Aminata Traoré]], hébergée à [[ADDRESS:Sarcelles]] chez une amie, est déclaré prioritaire et urgent.",
    "La commission de réforme a rendu un avis favorable à l'imputabilité au service de l'accident de [[PERSON:Jean-Marc Bouvier]], [[HEALTH:victime d'une fracture du bassin]].",
    "Mme [[PERSON:Isabelle Mercier]], présidente, ouvre la séance à 14 h. Le procès-verbal de la séance du {{3 mars 2024}} est adopté à l'unanimité.",
    "Conseil de discipline\u00a0: [[PERSON:Arnaud Lefebvre]], brigadier, a été [[CRIMINAL_RECORD:mis en examen pour violences volontaires]]. La commission propose une suspension de quatre mois.",
    "Les représentants du personnel, [[PERSON:Nadia Haddad]] ([[UNION_MEMBERSHIP:CGT]]) et [[PERSON:Olivier Blanc]] ([[UNION_MEMBERSHIP:SUD]]), demandent que le point soit reporté.",
    "{{Madame la Présidente}} rappelle que les débats sont confidentiels. La commission des droits et de l'autonomie accorde l'AAH à [[PERSON:Moussa Konaté]], [[HEALTH:taux d'incapacité de 80 %]].",
    "La commission d'attribution a retenu la candidature de [[PERSON:Hüseyin Öztürk]] pour le logement situé [[ADDRESS:6 rue Jean-Jaurès, 25000 Besançon]], type T3.",
    "Le comité médical départemental a examiné la situation de [[PERSON:Stéphanie Roy]], [[HEALTH:atteinte d'une maladie de Crohn]], et propose un congé de longue durée.",
    "Le rapporteur signale que le candidat [[PERSON:Loïc Perrot]] a mentionné lors de l'entretien être [[POLITICAL_OPINION:militant à La France insoumise]]. Le président rappelle que cette information ne doit pas être prise en compte.",
    "Commission des bourses\u00a0: la demande de [[PERSON:Lina Boudjema]] est acceptée à l'échelon 5. Celle de [[PERSON:Tom Hubert]] est ajournée faute de justificatifs.",
    "Le comité d'éthique de l'{{hôpital Georges-Pompidou}} a débattu du refus de transfusion opposé par un patient, M. [[PERSON:Joseph Kouassi]], [[RELIGION:témoin de Jéhovah]].",
    "La commission d'expulsion a entendu M. [[PERSON:Nikola Petrović]], actuellement [[CRIMINAL_RECORD:détenu au centre pénitentiaire de Fleury-Mérogis]]. Avis défavorable au maintien sur le territoire.",
    "Relevé de décisions\u00a0: la demande d'aide exceptionnelle de [[PERSON:Sandra Da Silva]], domiciliée [[ADDRESS:Bât. A, 2 résidence du Parc, 91000 Évry-Courcouronnes]], est accordée pour un montant de 400 euros.",
    "La formation spécialisée a noté que [[PERSON:Guillaume Robin]], [[UNION_MEMBERSHIP:représentant de l'UNSA]], a quitté la séance avant le vote.",
    "Le président de la commission rappelle la politique de {{santé publique}} du département et l'importance de la {{campagne de vaccination}} contre la grippe pour les agents.",
    "Dossier 12\u00a0: [[PERSON:Ioana Munteanu]], née le [[DATE_OF_BIRTH:16/10/2001]], sollicite une aide au permis de conduire. Avis favorable.",
    "Dossier 13\u00a0: [[PERSON:Jules Masson]], né le [[DATE_OF_BIRTH:02/02/2003]], demeurant [[ADDRESS:8 rue du Moulin, 49000 Angers]], même demande. Avis favorable sous réserve.",
    "Commission d'accès aux documents administratifs\u00a0: la communication du dossier médical de feu [[PERSON:Louis Granger]] à son fils, [[PERSON:Paul Granger]], est autorisée.",
    "Le comité de sélection note que la thèse de [[PERSON:Mihaela Stan]] porte sur la {{liberté syndicale}} en Europe et recommande son audition.",
    "Les élus ont débattu du projet de mosquée et de la {{laïcité}}. M. [[PERSON:Alain Perret]], [[POLITICAL_OPINION:élu Rassemblement national]], a demandé un vote séparé.",
    "Commission de surendettement\u00a0: [[PERSON:Sylvie Lambert]], [[ADDRESS:4 rue Pierre-et-Marie-Curie, 80000 Amiens]], expose que ses difficultés font suite à un [[HEALTH:cancer du côlon]].",
    "La commission pédagogique signale que l'étudiant [[PERSON:Zhang Lei]] est [[HEALTH:malentendant]] et bénéficie d'un tiers temps aux examens.",
    "[[PERSON:Inès Laurent]], agente d'accueil, a fait état de remarques répétées de sa hiérarchie depuis qu'elle a révélé être [[SEXUAL_ORIENTATION:bisexuelle]].",
]

# Mails internes -------------------------------------------------------------
GENRES["mail"] = [
    "{{Bonjour}} à tous, [[PERSON:Sophie Lefèvre]] sera absente toute la semaine. Pour les dossiers urgents, voyez avec [[PERSON:Karim]]. Bonne journée, [[PERSON:Julie Marchand]]",
    "De\u00a0: [[PERSON:Pierre Dumont]]\nÀ\u00a0: [[PERSON:Rose Lambert]]\nObjet\u00a0: dossier [[PERSON:Benali]]\n{{Bonjour}} [[PERSON:Rose]], peux-tu me renvoyer la pièce manquante\u00a0? {{Merci}}, [[PERSON:Pierre]]",
    "Salut [[PERSON:Mehdi]], le dossier de [[PERSON:Aliou Diop]] est toujours bloqué au service des étrangers. Il habite [[ADDRESS:5 rue de Metz, 31000 Toulouse]], tu peux lui écrire directement.",
    "Pour info, [[PERSON:Anne-Laure Chevalier]] est [[HEALTH:hospitalisée pour une chimiothérapie]], elle ne reviendra pas avant {{avril}}. Merci de ne pas en parler en dehors du service.",
    "Réunion de service {{le 14/02/2025}} à 10 h en {{salle Jean-Monnet}}. Ordre du jour\u00a0: bilan de {{mars}}, départ de [[PERSON:Christine Bonnet]], budget.",
    "[[PERSON:Océane Morel]] m'indique que son conjoint, [[PERSON:Ludovic Morel]], a été [[CRIMINAL_RECORD:placé en garde à vue]] hier soir\u00a0; elle pose sa journée.",
    "Cc\u00a0: [[PERSON:Olivier Lambert]], [[PERSON:Fatima Zahra El Idrissi]], [[PERSON:Ngozi Okonkwo]]. Merci de valider la liste des admissibles avant vendredi.",
    "Je transmets le courriel de [[PERSON:Mathieu Perrin]]\u00a0: il souhaite être reçu par {{Monsieur le Directeur}} au sujet de sa notation.",
    "Bonjour Madame, suite à notre échange téléphonique, je vous confirme l'adresse de M. [[PERSON:Kevin Rousseau]]\u00a0: [[ADDRESS:Résidence Les Pins, bât. D, apt 12, 13090 Aix-en-Provence]].",
    "{{Merci}} pour ton aide sur la note. [[PERSON:Lucie]] et [[PERSON:Baptiste]] ont relu la partie budgétaire, il reste à intégrer les remarques de Me [[PERSON:Diane Roussel]].",
    "Attention, dans le tableur partagé, la colonne « commentaire » indique pour [[PERSON:Samuel Ferrand]] qu'il est [[SEXUAL_ORIENTATION:en couple avec un homme]]. Il faut supprimer cette mention.",
    "Bonjour, le {{service de psychiatrie}} de l'hôpital nous demande les coordonnées de la référente handicap. C'est [[PERSON:Agathe Lemaître]], poste 4521.",
    "Petit rappel\u00a0: [[PERSON:Paul-Henri Vasseur]] est [[UNION_MEMBERSHIP:délégué syndical]], toute convocation le concernant doit être visée par le juriste.",
    "[[PERSON:Nadia Haddad]] a appelé\u00a0: sa mère, née le [[DATE_OF_BIRTH:4 juin 1948]], doit être relogée en rez-de-chaussée. Je lui ai donné les coordonnées du CCAS.",
    "Je vous informe que [[PERSON:Hamza Belkacem]] a été [[HEALTH:testé positif au VIH]] lors de la visite d'embauche\u00a0; cette information ne devait pas figurer dans le mail du médecin. Merci de le supprimer.",
    "Hello, la mise à jour {{Microsoft Teams}} est prévue ce soir. Si problème, contactez [[PERSON:Yannick]] au support.",
    "La nouvelle stagiaire, [[PERSON:Aïcha Diallo]], arrive lundi. Elle aura le bureau de [[PERSON:Étienne]] en attendant son retour de congé.",
    "Envoyé depuis mon iPhone – [[PERSON:Frédéric Lopes]], chef du bureau du contentieux, {{Préfecture du Rhône}}, [[ADDRESS:106 rue Pierre-Corneille, 69003 Lyon]].",
    "Je relaie la demande de [[PERSON:Laurent Marchal]], [[UNION_MEMBERSHIP:adhérent FO]] depuis 2010, qui souhaite que cette mention ne figure pas dans son dossier.",
    "{{Madame la Directrice}} souhaite le tableau des effectifs pour jeudi. [[PERSON:Florence Michaud]] le prépare avec l'aide de [[PERSON:Victor Bonnet]].",
    "Pour l'enquête administrative, [[PERSON:Théo Marchand]] a des [[CRIMINAL_RECORD:antécédents judiciaires]] selon le fichier\u00a0; ne pas l'affecter au guichet.",
    "Ma collègue [[PERSON:Sarah Benhamou]] est [[RELIGION:juive pratiquante]] et ne pourra pas assurer la permanence du samedi\u00a0; je la remplace.",
    "{{Bonne année}} à toutes et à tous\u00a0! Signé [[PERSON:Karim Benali]], pour l'équipe du pôle juridique.",
    "[[PERSON:Émilie Rousseau]] propose de décaler la formation au {{mois de mars}}. Les inscriptions se font sur la plateforme {{Mentor}}.",
    "Le dossier de [[PERSON:Quentin Gauthier]] évoque son [[POLITICAL_OPINION:engagement au sein du Parti socialiste]]\u00a0; ce n'est pas pertinent pour l'instruction de la demande.",
    "Info de dernière minute\u00a0: [[PERSON:Jean-Luc Renaud]] remplacera [[PERSON:Marie-Christine Lemaire]] au jury. {{Merci}} de mettre à jour la convocation.",
    "[[PERSON:Romain Dufour]] a transmis son acte de mariage\u00a0: il est [[SEXUAL_ORIENTATION:marié à un homme]] depuis {{juin}}, merci de mettre à jour la fiche des ayants droit.",
    "Peux-tu vérifier l'identité de [[PERSON:Lucas Moreira]] (DDN [[DATE_OF_BIRTH:3/7/88]]) dans l'applicatif\u00a0? Il dit avoir déjà un dossier à la {{préfecture de Bobigny}}.",
]

# Additional mixed items (courriers, fiches, signalements) -------------------
GENRES["div"] = [
    "Attestation d'hébergement\u00a0: je soussigné [[PERSON:Mustapha Ait Ahmed]], demeurant [[ADDRESS:19 rue Voltaire, 93100 Montreuil]], certifie héberger à titre gratuit [[PERSON:Said Ait Ahmed]], né le [[DATE_OF_BIRTH:12/12/1999]].",
    "Avis d'imposition adressé à M. et Mme [[PERSON:DA SILVA Paulo]], [[ADDRESS:La Croix Blanche, 35500 Vitré]].",
    "Demande de RSA présentée par [[PERSON:Christelle Lebrun]], née le [[DATE_OF_BIRTH:27/06/1984]], domiciliée [[ADDRESS:2 bis impasse du Four, 62300 Lens]].",
    "L'huissier a remis l'acte à M. [[PERSON:Alexandre Renard]], [[ADDRESS:45 avenue Foch, 54000 Nancy]], en mains propres {{le 17 janvier 2025}}.",
    "Le dossier de surendettement de [[PERSON:Natacha Mironescu]] fait état d'une [[HEALTH:bipolarité]] diagnostiquée en 2018 ayant entraîné une perte d'emploi.",
    "Réunion publique {{le 3 juin 2025}} à l'{{université Paris-Descartes}}. Inscription obligatoire auprès du secrétariat.",
    "{{Avril}} a été marqué par une hausse de 12\u00a0% des demandes de titres de séjour à la {{préfecture de Lyon}}.",
    "La pétition contre la fermeture du {{lycée Victor-Hugo}} a recueilli 3 000 signatures. {{Monsieur le Préfet}} recevra une délégation de parents {{le 12 mai}}.",
    "Les {{élections municipales}} auront lieu en mars. Les partis politiques peuvent déposer leurs listes en préfecture jusqu'au {{27 février}}.",
    "Le centre {{Pierre-Mendès-France}} accueille la permanence du {{Défenseur des droits}} chaque mardi, {{avenue Jean-Jaurès}}.",
    "Le tarif du repas à la cantine de l'{{école Marie-Curie}} passera à 3,50 euros à la rentrée de {{septembre}}.",
    "{{Victoire}} du service des sports\u00a0: l'équipe de la mairie remporte le tournoi inter-administrations organisé à {{Valence}}.",
    "L'{{Observatoire de la laïcité}} a publié son rapport annuel sur les pratiques religieuses dans les services publics.",
    "Le {{casier judiciaire national}} délivre le bulletin n° 3 en ligne. Aucune pièce d'identité n'est demandée pour la démarche.",
    "Les {{organisations syndicales}} représentatives ont signé l'accord sur le télétravail {{le 14 février 2025}}.",
    "Merci de stationner vos véhicules de service ({{Peugeot 208}}, {{Dacia Sandero}}) sur le parking de la {{rue Émile-Zola}}.",
    "Objet\u00a0: Journée mondiale de lutte contre le sida. L'agence régionale de santé organise des dépistages gratuits {{le 1er décembre}} à l'{{hôpital Lariboisière}}.",
    "{{Madame la Directrice}} rappelle que les réunions de la commission ont lieu le premier jeudi de chaque mois, {{salle Simone-Veil}}.",
    "Le {{mois de mars}} sera consacré à la refonte du site internet. Un prestataire, la société {{Michelin Conseil}}, a été retenu.",
    "La {{Saint-Martin}} est fériée en Alsace-Moselle pour certains établissements. Les {{congés de Noël}} commencent {{le 20 décembre}}.",
    "Merci d'indiquer dans le formulaire votre pays d'origine et vos diplômes. Les données sont traitées par la {{direction générale des étrangers en France}}.",
    "La MDPH de {{Haute-Garonne}} est fermée le vendredi après-midi. Les dossiers peuvent être déposés à l'accueil, {{place Saint-Étienne}}.",
    "Le préfet de {{Nancy}} a reçu les représentants des cultes {{le 9 décembre}}, journée de la {{laïcité}}.",
    "Le nouveau logiciel de gestion des procédures, baptisé « {{Justine}} », sera déployé dans les greffes en {{juin}}.",
    "Le plan de mobilité prévoit un arrêt de tramway {{avenue Charles-de-Gaulle}} et un parking relais près du {{stade Pierre-Mauroy}}.",
    "Le bénéficiaire, [[PERSON:Gaston Lefebvre]], né le [[DATE_OF_BIRTH:6 mai 1950]] à Béthune, est titulaire d'une pension de réversion depuis le décès de son épouse.",
    "Mme [[PERSON:Yvette Guillot]], [[ADDRESS:8 chemin du Lavoir, 71100 Chalon-sur-Saône]], conteste l'avis de stationnement reçu pour son véhicule {{Citroën C3}}.",
    "Note au cabinet\u00a0: M. [[PERSON:Bruno Carré]], maire de la commune, a reçu [[PERSON:Dalila Amari]] qui se plaint d'avoir été écartée lors d'un entretien d'embauche parce qu'elle est [[RELIGION:musulmane]].",
    "L'enquête sociale concerne [[PERSON:Kamel Boukhari]], né le [[DATE_OF_BIRTH:18 novembre 1969]], et son épouse, [[PERSON:Houria Boukhari]], née le [[DATE_OF_BIRTH:2 février 1972]].",
    "Selon le rapport d'enquête, [[PERSON:Fabrice Meunier]] est [[POLITICAL_OPINION:membre du bureau fédéral d'Europe Écologie Les Verts]] et a participé à la manifestation.",
    "[[PERSON:Simone Aubert]], domiciliée à [[ADDRESS:Brive-la-Gaillarde]], sollicite l'allocation personnalisée d'autonomie pour son mari, [[PERSON:Robert Aubert]], [[HEALTH:atteint de la maladie de Parkinson]].",
    "Le comité a noté que [[PERSON:Eric Vallée]], candidat au poste de conseiller, a été [[POLITICAL_OPINION:candidat du Rassemblement national]] aux dernières élections départementales.",
    "Le requérant, [[PERSON:Tarik Benyoucef]], fait valoir qu'il a été écarté du jury en raison de son [[ETHNIC_ORIGIN:origine ethnique]], ce que conteste l'administration.",
    "Le formulaire de l'ancien logiciel indiquait pour [[PERSON:Mohamed Belkacem]] la mention « [[ETHNIC_ORIGIN:race\u00a0: arabe]] »\u00a0; elle a été supprimée.",
    "Les statistiques ethniques sont interdites par la loi. La CNIL rappelle que l'{{origine}} des usagers ne peut être collectée sans base légale.",
    "Le médecin certifie que [[PERSON:Julien Garnier]] est [[HEALTH:atteint d'une cirrhose]] et inapte à tout travail de nuit.",
    "La fiche de contrôle d'identité de [[PERSON:Kylian Fontaine]], né le [[DATE_OF_BIRTH:12/06/2006]], mentionne qu'il est [[ETHNIC_ORIGIN:de type nord-africain]], mention contraire aux instructions.",
    "{{Monsieur le Maire}} a reçu M. [[PERSON:Vincent Pham]], [[POLITICAL_OPINION:sympathisant écologiste]], au sujet du projet de rocade.",
    "Mme [[PERSON:Huong Tran]], née le [[DATE_OF_BIRTH:20/11/1965]], a été [[HEALTH:opérée d'une tumeur au cerveau]] et demande une prolongation de son arrêt.",
    "[[PERSON:Pierre-Yves Le Gall]], [[ADDRESS:Kerlann, 29200 Brest]], propose son terrain pour l'aire de covoiturage.",
    "Le colis destiné à [[PERSON:Bich Ngoc Vu]] a été retourné à l'expéditeur\u00a0: il manquait le numéro d'appartement à l'adresse [[ADDRESS:7 rue Saint-Exupéry, 33700 Mérignac]].",
    "La restauration de la façade en {{pierre}} de l'hôtel de ville débutera {{en avril}}\u00a0; les massifs de {{roses}} du square seront déplacés.",
]

# ---------------------------------------------------------------------------

SPAN_RE = re.compile(r"\[\[([A-Z_]+):(.+?)\]\]|\{\{(.+?)\}\}", re.S)
SENT_END_RE = re.compile(
    r"(?<!\bM)(?<!\bMM)(?<!\bBât)(?<!\bbât)(?<!\bn°)[.!?](?=\s+[A-ZÀ-ÖØ-Þ«\[]|\s*$)"
)
EDGE_PUNCT = set(" \t\n,;:.!?()«»\"'\u00a0\u202f–-")
LEADING_CIVILITY_RE = re.compile(r"(?:M\.|MM\.|Mme|Mlle|Monsieur|Madame|Mademoiselle|Me|Maître|Dr|Docteur|Pr)\s")
# Words that, right before a name, cue a detector almost as well as a civility.
CUE_RE = re.compile(
    r"(?:requérante?|plaignante?|mis en cause|prévenue?|victime|intéressée?|demandeu(?:r|se)|témoins?|"
    r"épouse|époux|veuve|veuf|née?|fils|fille|père|mère|sœur|frère|conjoint|compagnon|compagne|enfant|"
    r"élève|étudiante?|agente?|candidate?|suspect|comptable|stagiaire|collègue|"
    r"Nom(?: d'usage| de naissance)?|Prénom(?:s|\(s\))?|Agent|Demandeur|Candidat|Cc|De|À|Objet\W+dossier|"
    r"Signé|signé|soussignée?|identifié comme)\W*$"
)
CIVILITY_RE = re.compile(
    r"(?:\bM\.|\bMM\.|\bMme|\bMmes|\bMlle|\bMonsieur|\bMadame|\bMademoiselle|\bMe|\bMaître|\bDr|\bDocteur|\bPr)\s*$"
)


def parse(marked):
    """Return (text, labels, negatives) for one marked-up string."""
    out = []
    nbytes = 0
    labels = []
    negatives = []
    pos = 0
    for m in SPAN_RE.finditer(marked):
        plain = marked[pos:m.start()]
        out.append(plain)
        nbytes += len(plain.encode("utf-8"))
        if m.group(1) is not None:
            kind, surface = m.group(1), m.group(2)
            if kind not in LABEL_TYPES:
                raise ValueError(f"unknown label type {kind!r} in {marked!r}")
            if surface != surface.strip():
                raise ValueError(f"label with outer whitespace {surface!r}")
            start = nbytes
            nbytes += len(surface.encode("utf-8"))
            labels.append([kind, start, nbytes])
            out.append(surface)
        else:
            surface = m.group(3)
            negatives.append(surface)
            nbytes += len(surface.encode("utf-8"))
            out.append(surface)
        pos = m.end()
    rest = marked[pos:]
    out.append(rest)
    text = "".join(out)
    for leftover in ("[[", "]]", "{{", "}}"):
        if leftover in text:
            raise ValueError(f"unbalanced markup {leftover!r} in {marked!r}")
    labels.sort(key=lambda l: (l[1], l[2]))
    return text, labels, negatives


def build():
    records = []
    meta = []
    for prefix, items in GENRES.items():
        for i, marked in enumerate(items, 1):
            text, labels, negatives = parse(marked)
            rid = f"{prefix}-{i:03d}"
            records.append({"id": rid, "text": text, "labels": labels})
            meta.append((rid, marked, negatives))
    return records, meta


def serialise(records):
    return "".join(json.dumps(r, ensure_ascii=False, separators=(", ", ": ")) + "\n" for r in records)


def validate(records, meta):
    errors = []
    ids = set()
    for rec, (rid, marked, _neg) in zip(records, meta):
        if rec["id"] in ids:
            errors.append(f"duplicate id {rec['id']}")
        ids.add(rec["id"])
        raw = rec["text"].encode("utf-8")
        if not unicodedata.is_normalized("NFC", rec["text"]):
            errors.append(f"{rid}: text is not in Unicode NFC")
        expected = [(m.group(1), m.group(2)) for m in SPAN_RE.finditer(marked) if m.group(1)]
        got = []
        prev_end = -1
        for kind, s, e in rec["labels"]:
            if not (0 <= s < e <= len(raw)):
                errors.append(f"{rid}: bad range {s}..{e}")
                continue
            try:
                surface = raw[s:e].decode("utf-8")
            except UnicodeDecodeError:
                errors.append(f"{rid}: range {s}..{e} splits a UTF-8 sequence")
                continue
            if s < prev_end:
                errors.append(f"{rid}: overlapping labels at {s}")
            prev_end = max(prev_end, e)
            got.append((kind, surface))
            if surface[0] in EDGE_PUNCT or surface[-1] in EDGE_PUNCT:
                errors.append(f"{rid}: label {surface!r} starts or ends with punctuation/space")
            if kind == "PERSON" and LEADING_CIVILITY_RE.match(surface):
                errors.append(f"{rid}: PERSON label {surface!r} includes a civility")
        if sorted(got) != sorted(expected):
            errors.append(f"{rid}: decoded labels {got} != marked {expected}")
        n_sent = len(SENT_END_RE.findall(rec["text"]))
        if n_sent > 3:
            errors.append(f"{rid}: more than 3 sentences ({n_sent})")
    return errors


def stats(records, meta):
    counts = Counter()
    bare = 0
    no_cue = 0
    persons = 0
    with_neg = 0
    for rec, (_rid, _marked, negatives) in zip(records, meta):
        raw = rec["text"].encode("utf-8")
        for kind, s, e in rec["labels"]:
            counts[kind] += 1
            if kind == "PERSON":
                persons += 1
                before = raw[max(0, s - 40):s].decode("utf-8", "ignore")
                if not CIVILITY_RE.search(before):
                    bare += 1
                    tail = before.rstrip()
                    if not CUE_RE.search(tail) or tail == "":
                        no_cue += 1
        if negatives:
            with_neg += 1
    return counts, persons, bare, no_cue, with_neg


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    args = [a for a in argv[1:] if not a.startswith("--")]
    out_path = args[0] if args else os.path.join(here, "personal_handwritten.jsonl")
    records, meta = build()
    data = serialise(records)
    # validate what was serialised, read back through the JSON parser
    records = [json.loads(line) for line in data.splitlines()]
    errors = validate(records, meta)
    if "--check" in argv:
        with open(out_path, encoding="utf-8") as f:
            if f.read() != data:
                errors.append(f"{out_path} differs from the output of this script")
    if errors:
        for e in errors:
            print("ERROR", e, file=sys.stderr)
        return 1
    if "--check" not in argv:
        with open(out_path, "w", encoding="utf-8", newline="\n") as f:
            f.write(data)
    counts, persons, bare, no_cue, with_neg = stats(records, meta)
    n = len(records)
    print(f"texts: {n}")
    print(f"labels: {sum(counts.values())}")
    for kind in LABEL_TYPES:
        flag = "" if counts[kind] >= MINIMUMS[kind] else f"   (below target {MINIMUMS[kind]})"
        print(f"  {kind:<20}{counts[kind]:>4}{flag}")
    print(f"PERSON without a civility right before: {bare}/{persons} ({100.0 * bare / persons:.0f} %)")
    print(f"PERSON with neither civility nor role/kinship/field cue right before: {no_cue}/{persons} ({100.0 * no_cue / persons:.0f} %)")
    print(f"texts with marked hard negatives: {with_neg}/{n} ({100.0 * with_neg / n:.0f} %)")
    genres = Counter(r["id"].rsplit("-", 1)[0] for r in records)
    print("texts per genre: " + ", ".join(f"{g} {genres[g]}" for g in GENRES))
    print(f"texts without any label: {sum(1 for r in records if not r['labels'])}")
    short = [k for k in LABEL_TYPES if counts[k] < MINIMUMS[k]]
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
